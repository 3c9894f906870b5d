"""params.yaml `shared`: read by the stages that declare shared.* in dvc.yaml."""

from __future__ import annotations

from typing import Literal

from arxiv_embed.schema.base import NonNegativeInt, Section


class Shared(Section):
    seed: NonNegativeInt
    label: Literal["primary_category", "archive"]
