"""The one training recipe: the objectives finetune trains, as (name, data, loss, weight), built once.

As in sentence-transformers' multi-task example (datasets and losses keyed by one name), both modes
consume the same list: mode=full hands it to the trainer (`trainer_inputs`: a DatasetDict and a
loss per dataset name), mode=adapter trains on its rows' cached vectors (training/adapter.py).
The objectives:
- each finetune.train_data kind with finetune.loss (weight 1);
- RETAIN: title->abstract pairs with MNRL, weight finetune.retain_title_abstract (no forgetting of
  search), unless title_abstract is a train_data kind already;
- MINED: the base model's hard negatives (training/mining.py) with TripletLoss (cosine,
  finetune.margin), weight finetune.hard_negatives.weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arxiv_embed.errors import TrainingSetupError
from arxiv_embed.training import losses
from arxiv_embed.training.data import KINDS, kind_frame, read_texts
from arxiv_embed.training.losses import MINED, RETAIN

if TYPE_CHECKING:
    import polars as pl
    from datasets import Dataset, DatasetDict
    from torch import nn

    from arxiv_embed.schema.finetune import Finetune


@dataclass(frozen=True)
class Objective:
    name: str  # a train_data kind, RETAIN or MINED: the trainer's dataset name
    data: pl.DataFrame  # the loss's columns in the order it reads them: texts, then any label/score
    loss: nn.Module  # the library loss (built on the model, or on None for the adapter's embeddings)
    weight: float
    groups: pl.Series | None = None  # an int label per row, for the trainer's label-grouped batches


def weighted_losses(model: Any, ft: Finetune) -> dict[str, tuple[nn.Module, float]]:
    """Objective name -> (loss, weight): the one place the recipe's losses and weights are chosen
    (no data read here: the GPU profile uses it on images without polars)."""
    main = losses.build_loss(model, ft)
    chosen = {kind: (main, 1.0) for kind in ft.train_data}
    if ft.retain_title_abstract and "title_abstract" not in ft.train_data:
        chosen[RETAIN] = (losses.LOSSES["mnrl"].build(model, ft), ft.retain_title_abstract)
    if ft.hard_negatives.weight:
        chosen[MINED] = (losses.LOSSES["triplet"].build(model, ft), ft.hard_negatives.weight)
    return chosen


def objectives(model: Any, ft: Finetune, frames: dict[str, pl.DataFrame] | None = None,
               mined: pl.DataFrame | None = None) -> list[Objective]:
    """The recipe of `ft` (module docstring). frames: kind -> kind_frame(kind), when already read;
    mined: mining.Mined.triplets, required when finetune.hard_negatives.weight > 0."""
    import polars as pl

    losses.check_combination(ft)
    frames = frames or {}
    frame = lambda kind: frames[kind] if kind in frames else kind_frame(kind)  # noqa: E731
    recipe = []
    for name, (loss, weight) in weighted_losses(model, ft).items():
        if name == RETAIN:
            # The paper's label rides along for the trainer's label-grouping sampler (MNRL ignores it).
            labels = read_texts(KINDS["title_abstract"].file("train"), ["label"])["label"]
            recipe.append(Objective(name, frame("title_abstract"), loss, weight, labels.rank("dense").cast(pl.Int64)))
        elif name == MINED:
            if mined is None:
                raise ValueError("finetune.hard_negatives.weight > 0: pass the mined triplets (training.mining.mine_train_split)")
            if mined.height:
                recipe.append(Objective(name, mined.drop("label"), loss, weight, mined["label"].rank("dense").cast(pl.Int64)))
        else:
            recipe.append(Objective(name, frame(name), loss, weight))
    return recipe


def trainer_inputs(recipe: list[Objective], ft: Finetune, processes: int = 1) -> tuple[Dataset | DatasetDict, nn.Module | dict[str, nn.Module]]:
    """What SentenceTransformerTrainer takes: one dataset and its loss, or (several objectives) a
    DatasetDict and a loss per dataset name, each scaled by its weight. When the loss's sampler
    batches by label (losses.batch_sampler), every dataset carries a `label` column."""
    from datasets import Dataset, DatasetDict

    grouped = losses.batch_sampler(ft) == "group_by_label"

    def dataset(objective: Objective) -> Dataset:
        data = objective.data
        if grouped and objective.groups is not None and "label" not in data.columns:
            data = data.with_columns(label=objective.groups)
        # The library's sampler refuses fewer with a traceback, once the model and the data are loaded.
        if grouped and "label" in data.columns and (pairable := int((data["label"].value_counts()["count"] >= 2).sum())) < 2:
            raise TrainingSetupError(
                f"finetune.loss={ft.loss} batches every objective by label, and a batch needs two labels of two rows or "
                f"more: the {objective.name!r} objective's {data.height:,} rows have {pairable}; train on more papers (more "
                "records, or a higher make_triplets.max_train_papers)"
                + (", or set finetune.hard_negatives.weight: 0" if objective.name == MINED else ""))
        # One short batch an epoch, not the batch the params (and the run's record) say; under torchrun each of the
        # `processes` takes a whole batch (transformers drops a last short one there): fewer rows train 0 steps.
        if data.height < ft.batch_size * processes:
            more = (f"raise make_triplets.{losses.COUNT_OF_KIND[objective.name]}.train" if objective.name in losses.COUNT_OF_KIND
                    else "train on more papers (more records, or a higher make_triplets.max_train_papers)")
            each = f" x finetune.full.nproc_per_node={processes} processes" if processes > 1 else ""
            raise TrainingSetupError(f"finetune.batch_size={ft.batch_size}{each} is more than the {data.height:,} train rows of "
                                     f"the {objective.name!r} objective: lower it, or {more}")
        return Dataset.from_dict(data.to_dict(as_series=False))

    sets = {o.name: dataset(o) for o in recipe}
    return (next(iter(sets.values())) if len(sets) == 1 else DatasetDict(sets)), trainer_loss({o.name: (o.loss, o.weight) for o in recipe})


def trainer_loss(weighted: dict[str, tuple[nn.Module, float]]) -> nn.Module | dict[str, nn.Module]:
    """The trainer's loss argument: the one loss, or a loss per dataset name scaled by its weight."""
    if len(weighted) == 1:
        return next(iter(weighted.values()))[0]
    return {name: loss if weight == 1.0 else _scaled(loss, weight) for name, (loss, weight) in weighted.items()}


def _scaled(loss: nn.Module, weight: float) -> nn.Module:
    from torch import nn

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.loss, self.weight = loss, weight
            self.model = loss.model

        def forward(self, features, labels):  # noqa: ANN001 (the library's loss signature)
            return self.weight * self.loss(features, labels)

    return Scaled()
