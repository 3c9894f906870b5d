"""params.yaml `split` (the split stage, with shared.seed and shared.label)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from arxiv_embed.schema.base import Section
from arxiv_embed.schema.shared import Shared


class Split(Section):
    method: Literal["stratified", "time"]
    time_field: Literal["first_version", "update_date"]
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    min_papers_per_label: Annotated[int, Field(ge=3)]
    rare_labels: Literal["other", "drop"]

    @model_validator(mode="after")
    def _fractions(self) -> Split:
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ValueError("split.eval_fraction + split.test_fraction must be < 1 (the rest is train)")
        return self


class SplitParams(Section):
    shared: Shared
    split: Split
