"""params.yaml `clean` (the clean stage)."""

from __future__ import annotations

from pydantic import model_validator

from arxiv_embed.schema.base import Fraction, NonNegativeInt, PositiveInt, Section


class Clean(Section):
    min_abstract_words: NonNegativeInt
    max_abstract_words: PositiveInt
    max_malformed_fraction: Fraction

    @model_validator(mode="after")
    def _range(self) -> Clean:
        if self.min_abstract_words > self.max_abstract_words:
            raise ValueError("clean.min_abstract_words must be <= clean.max_abstract_words")
        return self


class CleanParams(Section):
    clean: Clean
