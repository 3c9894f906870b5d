"""params.yaml `shared`: read by the stages that declare shared.* in dvc.yaml."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from arxiv_embed.schema.base import Section


class Shared(Section):
    # numpy's and scikit-learn's seeds are 32-bit: a larger one failed in evaluate, after training.
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    label: Literal["primary_category", "archive"]
