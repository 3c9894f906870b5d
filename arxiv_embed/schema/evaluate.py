"""params.yaml `evaluate` (evaluate_base and evaluate, with model and shared.seed)."""

from __future__ import annotations

from typing import Literal

from arxiv_embed.schema.base import PositiveInt, Section
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.shared import Shared


class Evaluate(Section):
    batch_size: PositiveInt
    max_train_papers: PositiveInt
    learning_curve_sizes: list[PositiveInt]
    binary_rescore_multiplier: PositiveInt
    min_label_support: PositiveInt
    map_2d: Literal["pca", "tsne"]
    backend: Literal["torch", "int8"]


class EvaluateParams(Section):
    shared: Shared
    model: Model
    evaluate: Evaluate
