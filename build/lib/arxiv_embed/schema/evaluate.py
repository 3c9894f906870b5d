"""params.yaml `evaluate` (evaluate_base and evaluate, with model and shared.seed)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict

from arxiv_embed.schema.base import PositiveInt, Section
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.shared import Shared


class Evaluate(Section):
    batch_size: PositiveInt
    max_test_papers: PositiveInt  # stratified, seeded sample of the test split that every lens scores
    max_train_papers: PositiveInt
    learning_curve_sizes: list[PositiveInt]
    binary_rescore_multiplier: PositiveInt
    min_label_support: PositiveInt
    map_2d: Literal["pca", "tsne"]


class FinetuneMode(Section):
    """finetune.mode alone: in adapter mode evaluate applies the adapter to embed_base's cached vectors
    (the rest of `finetune` is the finetune stage's business, so its knobs do not rerun evaluate)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    mode: Literal["adapter", "full"]


class EmbedBaseBackend(Section):
    """embed_base.backend alone: mode=full encodes the fine-tuned model with the backend the base model's
    vectors were encoded with, so base and fine-tuned are scored alike (int8 against fp32 would bias every delta)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    backend: Literal["torch", "int8"]


class EvaluateParams(Section):
    shared: Shared
    model: Model
    evaluate: Evaluate
    finetune: FinetuneMode
    embed_base: EmbedBaseBackend
