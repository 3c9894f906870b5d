"""params.yaml `embed_base` (the embed_base stage, with model, shared.seed and evaluate's test sample size)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from arxiv_embed.schema.base import NonNegativeInt, PositiveInt, Section
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.shared import Shared


class EmbedBase(Section):
    batch_size: PositiveInt
    chunk_size: PositiveInt  # texts per resumable chunk file
    reuse_max_texts: NonNegativeInt  # texts whose vectors the reuse store keeps: this run's, then earlier runs' others
    backend: Literal["torch", "int8"]


class EvaluateSample(Section):
    """The evaluate key that chooses which test papers embed_base encodes; the rest of `evaluate` is the
    evaluate stages' business (validated there and by `python -m arxiv_embed.params`), so a new evaluate
    key does not rerun embed_base."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    max_test_papers: PositiveInt


class EmbedBaseParams(Section):
    shared: Shared
    model: Model
    embed_base: EmbedBase
    evaluate: EvaluateSample
