"""The losses finetune can train with: ONE table, LOSSES. Adding a loss is adding one row.

A row names the library loss (its factory), the batch sampler the trainer must use with it, the
make_triplets data kinds it can read (their columns are in data.KINDS) and its own checks. The
finetune schema (schema/finetune.py) takes finetune.loss's choices from this table's keys, so an
unknown name fails validation; check_combination, data_files, recipe, build_loss and batch_sampler read it.

The schema imports this module, so it stays light: the library is imported inside the factories only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arxiv_embed.errors import TrainingSetupError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from torch import nn

    from arxiv_embed.schema.finetune import Finetune

RETAIN = "retain_title_abstract"  # the objective (recipe.py) of the no-forgetting title->abstract pairs
# The make_triplets count each data kind's train rows come from (labels and title_abstract: one row a train paper).
COUNT_OF_KIND = {"triplets": "triplets_per_split", "same_label": "same_label_pairs_per_split",
                 "graded_pairs": "graded_pairs_per_split", "binary_pairs": "graded_pairs_per_split"}
MINED = "hard_negatives"  # the objective (recipe.py) of the mined triplets (mining.py)
Check = Callable[["Finetune"], None]  # raises TrainingSetupError naming the params when the row cannot train on them


def _library(name: str, **kwargs: Any) -> Callable[[Any, Finetune], nn.Module]:
    """A factory for sentence-transformers' loss class `name`; callable kwargs are read from finetune."""

    def build(model: Any, ft: Finetune) -> nn.Module:
        from sentence_transformers.sentence_transformer import losses

        return getattr(losses, name)(model, **{k: v(ft) if callable(v) else v for k, v in kwargs.items()})

    build.library_name = name  # type: ignore[attr-defined]
    return build


def _own(name: str, **kwargs: Any) -> Callable[[Any, Finetune], nn.Module]:
    """As _library, for a loss of training/label_losses.py (same interface as the library's)."""

    def build(model: Any, ft: Finetune) -> nn.Module:
        from arxiv_embed.training import label_losses

        return getattr(label_losses, name)(model, **{k: v(ft) if callable(v) else v for k, v in kwargs.items()})

    build.library_name = name  # type: ignore[attr-defined]
    return build


def _cosine() -> Callable:
    from sentence_transformers.sentence_transformer.losses import (
        BatchHardTripletLossDistanceFunction,
    )

    return BatchHardTripletLossDistanceFunction.cosine_distance


def _triplet_cosine(ft: Finetune) -> Any:
    from sentence_transformers.sentence_transformer.losses import TripletDistanceMetric

    return TripletDistanceMetric.COSINE


def _even_batch(ft: Finetune) -> None:
    if ft.batch_size < 4 or ft.batch_size % 2:
        raise TrainingSetupError(f"finetune.loss={ft.loss} groups several papers per label in a batch: finetune.batch_size must be even "
                                 f"and >= 4 (got {ft.batch_size})")


def _mini_batch(ft: Finetune) -> None:
    if ft.full.mini_batch_size > ft.batch_size:
        raise TrainingSetupError(f"finetune.full.mini_batch_size={ft.full.mini_batch_size} > finetune.batch_size={ft.batch_size}: "
                                 "cached_mnrl splits each batch into mini-batches, so the mini-batch must be smaller")


def _full_only(ft: Finetune) -> None:
    if ft.mode == "adapter":
        raise TrainingSetupError(f"finetune.loss={ft.loss} caches activations of the encoder, which mode=adapter freezes: use mode=full or loss mnrl")


@dataclass(frozen=True)
class LossRow:
    build: Callable[[Any, Finetune], nn.Module]  # (model, finetune) -> the library loss
    sampler: str  # sentence-transformers BatchSamplers value
    kinds: tuple[str, ...]  # finetune.train_data kinds it reads (columns: data.KINDS)
    checks: tuple[Check, ...] = ()
    about: str = ""


# Margins are for cosine distance (1 - cos) of normalised embeddings, which lies in [0, 2]: the
# library's Euclidean defaults (5 for batch-all) would never be satisfied and train on everything.
_LABEL_KINDS = ("labels",)
_TEXT_KINDS = ("same_label", "title_abstract", "triplets")
LOSSES: dict[str, LossRow] = {
    "mnrl": LossRow(_library("MultipleNegativesRankingLoss"), "no_duplicates", _TEXT_KINDS,
                    about="in-batch negatives; a triplets kind adds one hard negative per anchor"),
    "cached_mnrl": LossRow(_library("CachedMultipleNegativesRankingLoss", mini_batch_size=lambda ft: ft.full.mini_batch_size),
                           "no_duplicates", _TEXT_KINDS, (_mini_batch, _full_only), "MNRL with GradCache: big batches in little memory (GPU profile)"),
    "triplet": LossRow(_library("TripletLoss", distance_metric=_triplet_cosine, triplet_margin=lambda ft: ft.margin),
                       "batch_sampler", ("triplets",), about="(anchor, positive, negative) rows, cosine margin"),
    "batch_all": LossRow(_library("BatchAllTripletLoss", distance_metric=lambda ft: _cosine(), margin=lambda ft: ft.margin),
                         "group_by_label", _LABEL_KINDS, (_even_batch,), "every valid triplet in a label-grouped batch; never a same-label negative"),
    "batch_semi_hard": LossRow(_library("BatchSemiHardTripletLoss", distance_metric=lambda ft: _cosine(), margin=lambda ft: ft.margin),
                               "group_by_label", _LABEL_KINDS, (_even_batch,), "semi-hard negatives of other labels"),
    "batch_hard": LossRow(_library("BatchHardTripletLoss", distance_metric=lambda ft: _cosine(), margin=lambda ft: ft.margin),
                          "group_by_label", _LABEL_KINDS, (_even_batch,), "the hardest positive and negative per anchor"),
    "cosent": LossRow(_library("CoSENTLoss"), "batch_sampler", ("graded_pairs",), about="ranks pairs by their graded score"),
    "angle": LossRow(_library("AnglELoss"), "batch_sampler", ("graded_pairs",), about="CoSENT on angle differences"),
    "online_contrastive": LossRow(_library("OnlineContrastiveLoss", margin=lambda ft: ft.margin), "batch_sampler", ("binary_pairs",),
                                  about="hard positive/negative pairs in the batch (same label = 1)"),
    # Label-aware rows this project writes (training/label_losses.py: the library has no supervised contrastive loss).
    "supcon": LossRow(_own("SupervisedContrastiveLoss", temperature=lambda ft: ft.temperature, prototype_weight=lambda ft: ft.prototype_weight,
                           prototype_margin=lambda ft: ft.prototype_margin),
                      "group_by_label", _LABEL_KINDS, (_even_batch,),
                      "multi-positive InfoNCE over a batch's same-label abstracts (finetune.temperature), plus a label-prototype head "
                      "(finetune.prototype_weight, with finetune.prototype_margin)"),
}


def row(ft: Finetune) -> LossRow:
    return LOSSES[ft.loss]  # the schema only lets table keys through


def check_combination(ft: Finetune) -> None:
    """Reject loss/data/batch combinations the library would fail on later (or silently mis-train)."""
    spec = row(ft)
    for check in spec.checks:  # first: the mode and batch shape, which no choice of train_data mends
        check(ft)
    if len(set(ft.train_data)) != len(ft.train_data):
        raise TrainingSetupError(f"finetune.train_data={ft.train_data} lists a kind twice")
    if wrong := [kind for kind in ft.train_data if kind not in spec.kinds]:
        raise TrainingSetupError(
            f"finetune.loss={ft.loss} reads {', '.join(spec.kinds)}, but finetune.train_data={ft.train_data} has {wrong}: "
            f"set finetune.train_data to a subset of [{', '.join(spec.kinds)}], or pick a loss that reads {wrong[0]}"
        )


def build_loss(model: SentenceTransformer | Any, ft: Finetune) -> nn.Module:
    """The library loss for finetune.loss, wrapped in MatryoshkaLoss when mode=full and finetune.full.matryoshka_dims is set."""
    loss = row(ft).build(model, ft)
    if ft.mode == "full" and ft.full.matryoshka_dims:
        from sentence_transformers.sentence_transformer import losses

        dim = model.get_embedding_dimension()
        if dim and (too_big := [d for d in ft.full.matryoshka_dims if d > dim]):
            raise TrainingSetupError(f"finetune.full.matryoshka_dims {too_big} exceed the model's embedding dimension {dim}")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(ft.full.matryoshka_dims), reverse=True))
    return loss


def batch_sampler(ft: Finetune) -> str:
    """In-batch-negative losses must not see a text twice in a batch (it would be its own negative);
    batch-hard losses need several papers of several labels in every batch."""
    return row(ft).sampler
