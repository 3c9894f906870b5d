"""params.yaml `finetune` (the finetune stage, with model and shared.seed; push reads it for the card)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from arxiv_embed.schema.base import PositiveInt, Section, distinct
from arxiv_embed.errors import TrainingSetupError
from arxiv_embed.training.losses import LOSSES, check_combination
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.shared import Shared

# finetune.loss's choices are the LOSSES table's keys, so a new row is a new valid name. The data kinds
# are named here (tests/test_losses.py checks they equal training.data.KINDS): data.py reads this schema.
LossName = Literal[tuple(LOSSES)]  # type: ignore[valid-type]
DataKind = Literal["same_label", "title_abstract", "triplets", "labels", "graded_pairs", "binary_pairs"]


# What mode full's evaluators report (training/trainer.py builds them with these names and cut-offs): a typo in
# finetune.full.metric_for_best_model fails before any work, not after the base model's first evaluation.
TRIPLET_EVALUATOR, RETRIEVAL_EVALUATOR = "triplet", "title_abstract"
RETRIEVAL_CUTOFFS = {"accuracy": [1, 3, 5, 10], "precision": [1, 3, 5, 10], "recall": [1, 3, 5, 10], "mrr": [10], "ndcg": [10],
                     "map": [100]}


def evaluator_metrics(eval_retrieval: bool) -> list[str]:
    """The trainer's evaluation keys (`eval_` + the evaluators' own) with finetune.full.eval_retrieval on or off."""
    keys = ["eval_sequential_score", f"eval_{TRIPLET_EVALUATOR}_cosine_accuracy"]
    if eval_retrieval:
        keys += [f"eval_{RETRIEVAL_EVALUATOR}_cosine_{name}@{k}" for name, cutoffs in RETRIEVAL_CUTOFFS.items() for k in cutoffs]
    return keys


class Adapter(Section):
    """finetune.adapter (mode adapter only): a small identity-initialised adapter on the frozen encoder's cached embeddings."""

    kind: Literal["linear", "mlp"]
    extra_hidden: Annotated[int, Field(ge=0)]  # mlp: hidden units beyond the 2 x dim that carry the identity
    epochs: PositiveInt
    learning_rate: Annotated[float, Field(gt=0)]
    per_label: Annotated[int, Field(ge=2)]  # papers of one label in a label-grouped batch
    label_sampling: Literal["proportional", "sqrt", "balanced"]  # label-grouped chunks per label an epoch ~ count, sqrt(count), equal
    retain_distill: Annotated[float, Field(ge=0)]  # weight of squared error to the base embeddings; 0 = off
    ema_decay: Annotated[float, Field(ge=0, lt=1)]  # the adapter saved: moving average of its weights with this decay per step; 0 = the last step's
    query_adapter: bool  # queries (titles, search queries) through an adapter of their own: model.encode_query (a Router)
    members: PositiveInt  # adapters trained with seeds seed, seed + 1000, ... and merged into one (the mean of their outputs)


class Full(Section):
    """finetune.full (mode full only): sentence-transformers' trainer."""

    epochs: Annotated[float, Field(gt=0)]
    max_steps: int
    learning_rate: Annotated[float, Field(gt=0)]
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)]
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    weight_decay: Annotated[float, Field(ge=0)]
    gradient_accumulation_steps: PositiveInt
    mini_batch_size: PositiveInt
    matryoshka_dims: list[PositiveInt]
    multi_dataset_sampler: Literal["proportional", "round_robin"]
    eval_steps: PositiveInt
    save_steps: PositiveInt
    save_total_limit: PositiveInt
    early_stopping_patience: PositiveInt | None
    metric_for_best_model: str
    eval_retrieval: bool
    eval_retrieval_papers: PositiveInt
    precision: Literal["auto", "fp32", "fp16", "bf16"]
    nproc_per_node: PositiveInt



class HardNegatives(Section):
    """Triplets whose negative is the base model's nearest abstract of another label (training/mining.py)."""

    weight: Annotated[float, Field(ge=0)]  # weight of their TripletLoss trained alongside finetune.loss; 0 = off
    candidates: PositiveInt  # nearest abstracts scanned per anchor for one of another label


class Finetune(Section):
    """The keys directly here are the one recipe both modes read; `adapter` and `full` are read by their mode only."""

    mode: Literal["adapter", "full"]
    loss: LossName
    train_data: Annotated[list[DataKind], Field(min_length=1), AfterValidator(distinct)]
    margin: Annotated[float, Field(gt=0, le=2)]  # triplet-style losses: cosine distance, in (0, 2]
    batch_size: PositiveInt
    temperature: Annotated[float, Field(gt=0)]  # supcon: softmax temperature over cosine similarities
    prototype_weight: Annotated[float, Field(ge=0)]  # supcon: weight of the label-prototype cross-entropy; 0 = off
    prototype_margin: Annotated[float, Field(ge=0, lt=1)]  # supcon: cosine margin to the abstract's own prototype in the head
    retain_title_abstract: Annotated[float, Field(ge=0)]  # weight of title->abstract MNRL trained alongside; 0 = off
    hard_negatives: HardNegatives
    logging_steps: PositiveInt
    adapter: Adapter
    full: Full

    @model_validator(mode="after")
    def _label_batches(self) -> Finetune:
        # A batch holds batch_size // per_label labels: one label alone gives a label loss no negative (it trains on noise).
        if self.mode == "adapter" and "labels" in self.train_data and 2 * self.adapter.per_label > self.batch_size:
            raise ValueError(f"finetune.adapter.per_label={self.adapter.per_label} leaves room for one label in a batch of "
                             f"finetune.batch_size={self.batch_size}: keep per_label at most batch_size / 2")
        # A batch is batch_size // per_label whole chunks: the rest would go untrained while the run records batch_size.
        if self.mode == "adapter" and "labels" in self.train_data and self.batch_size % self.adapter.per_label:
            raise ValueError(f"finetune.batch_size={self.batch_size} is not a multiple of finetune.adapter.per_label="
                             f"{self.adapter.per_label}: a batch holds whole chunks of per_label papers, "
                             f"{self.batch_size // self.adapter.per_label * self.adapter.per_label} rows here")
        # Mode full ships the best evaluation's model, loaded from that step's checkpoint: an evaluation between two saves
        # (save_steps > eval_steps) could be the best with none to load (the last step's weights would ship as the best's).
        full = self.full
        metric = full.metric_for_best_model if full.metric_for_best_model.startswith("eval_") else f"eval_{full.metric_for_best_model}"
        if self.mode == "full" and metric not in evaluator_metrics(full.eval_retrieval):
            retrieval = ("" if full.eval_retrieval or metric not in evaluator_metrics(True)
                         else " (title->abstract metrics need finetune.full.eval_retrieval: true)")
            raise ValueError(f"finetune.full.metric_for_best_model={full.metric_for_best_model!r} is not a metric the evaluators "
                             f"report{retrieval}; choose one of: {', '.join(evaluator_metrics(full.eval_retrieval))}")
        if self.mode == "full" and full.save_steps != full.eval_steps:
            raise ValueError(
                f"finetune.full.save_steps={full.save_steps} with finetune.full.eval_steps={full.eval_steps}: every evaluation must "
                f"save the checkpoint the best model is loaded from; set finetune.full.save_steps: {full.eval_steps} "
                f"(or finetune.full.eval_steps: {full.save_steps}), the two equal"
            )
        # The loss's own rules (its data kinds, batch shape, mode): refused in params_check, before embed_base encodes.
        try:
            check_combination(self)
        except TrainingSetupError as error:
            raise ValueError(str(error)) from None
        return self

    def read_by_mode(self) -> dict:
        """The knobs this mode reads: the shared ones and its own section (what dvc.yaml tracks)."""
        other = "full" if self.mode == "adapter" else "adapter"
        return self.model_dump(exclude={other})


class FinetuneParams(Section):
    shared: Shared
    model: Model
    finetune: Finetune


TRAINED_WITH = "trained_with_params_sha256"  # in finetune's runtime record: push checks its card's knobs against it


def trained_with(seed: int, model: Model, finetune: Finetune) -> str:
    """sha256 of the knobs finetune tracks (dvc.yaml: shared.seed, model, the recipe and its mode's section), as
    params.yaml writes them. finetune records it with the model; push refuses a card whose knobs differ (a push run
    alone after a params change lists knobs that did not train the model). DVC reruns finetune whenever they change."""
    knobs = {"shared.seed": seed, "model": model.model_dump(mode="json"), "finetune": finetune.read_by_mode()}
    return hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()
