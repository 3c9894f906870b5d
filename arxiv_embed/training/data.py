"""The training data finetune reads: which files, and as which datasets.

The losses' data kinds and their checks live in losses.py; this module turns files into datasets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arxiv_embed import paths
from arxiv_embed.errors import TrainingSetupError
from arxiv_embed.files import read_table
from arxiv_embed.params import Finetune
from arxiv_embed.training import losses
from arxiv_embed.training.losses import MINED, RETAIN

if TYPE_CHECKING:
    import polars as pl
    from datasets import Dataset, DatasetDict

@dataclass(frozen=True)
class Kind:
    """One finetune.train_data kind: the make_triplets (or split) file it comes from, per split, and
    dataset column -> file column, in the order the losses read them (anchor, positive[, negative],
    then the label/score column the collator passes to the loss)."""

    file: Callable[[str], Path]
    columns: dict[str, str]


# Adding a data kind is one row here (plus the make_triplets code that writes its file).
KINDS: dict[str, Kind] = {
    "triplets": Kind(lambda split: paths.training_file(split, "triplets"), {"anchor": "anchor", "positive": "positive", "negative": "negative"}),
    "title_abstract": Kind(lambda split: paths.training_file(split, "title_abstract"), {"anchor": "anchor", "positive": "positive"}),
    "same_label": Kind(lambda split: paths.training_file(split, "same_label"), {"anchor": "anchor", "positive": "positive"}),
    # Each training paper's abstract and its label (an int id): the label-grouped batch losses. Train:
    # make_triplets' stratified train sample (paths.TRAIN_SAMPLE), the papers embed_base encoded.
    "labels": Kind(lambda split: paths.TRAIN_SAMPLE if split == "train" else paths.split_file(split), {"text": "abstract", "label": "label"}),
    # Pairs scored by arXiv's structure (make_triplets.graded_pairs): same primary category 1.0 >
    # shared cross-list category > same archive > other 0.0; `same_label` is the 1/0 version.
    "graded_pairs": Kind(lambda split: paths.training_file(split, "graded_pairs"), {"anchor": "anchor", "positive": "positive", "score": "score"}),
    "binary_pairs": Kind(lambda split: paths.training_file(split, "graded_pairs"), {"anchor": "anchor", "positive": "positive", "label": "same_label"}),
}
TEXT_COLUMNS = {name: tuple(kind.columns.values()) for name, kind in KINDS.items()}


def check_combination(finetune: Finetune) -> None:
    """The loss table's checks (kept here too: finetune and the benchmarks call it by this name)."""
    losses.check_combination(finetune)


def data_files(finetune: Finetune) -> tuple[list[Path], list[Path]]:
    """(training files, evaluation files) this configuration reads."""
    losses.check_combination(finetune)
    train = [KINDS[kind].file("train") for kind in finetune.train_data]
    if finetune.retain_title_abstract and "title_abstract" not in finetune.train_data:
        train.append(KINDS["title_abstract"].file("train"))
    if finetune.hard_negatives.weight:  # mined from same_label pairs over the train split (mining.py)
        train += [f for f in (KINDS["same_label"].file("train"), paths.TRAIN_SAMPLE) if f not in train]
    evaluation = [paths.training_file("eval", "triplets")]
    if finetune.eval_retrieval:
        evaluation.append(paths.training_file("eval", "title_abstract"))
    return train, evaluation


def read_texts(path: Path, columns: tuple[str, ...] | list[str]) -> pl.DataFrame:
    """The named columns of a make_triplets (or split) output, checked as every stage checks its inputs."""
    return read_table(path, columns, "make_triplets", TrainingSetupError)


def kind_frame(kind: str, split: str = "train") -> pl.DataFrame:
    """One data kind as a frame with the dataset's column names; labels become int ids (sorted label order)."""
    import polars as pl  # here, not at the top: the trainer's wiring imports this module on GPU images without polars

    spec = KINDS[kind]
    frame = read_texts(spec.file(split), list(spec.columns.values())).select(
        pl.col(source).alias(name) for name, source in spec.columns.items()
    )
    if kind == "labels":
        labels = sorted(frame["label"].unique().to_list())
        frame = frame.with_columns(pl.col("label").replace_strict(labels, list(range(len(labels))), return_dtype=pl.Int64))
    return frame


def train_dataset(finetune: Finetune, mined: pl.DataFrame | None = None) -> Dataset | DatasetDict:
    """The training data for finetune.loss: one Dataset, or a DatasetDict of kinds (multi-dataset
    training: each batch comes from one kind, so pairs and triplets never share a batch). With
    finetune.retain_title_abstract, title->abstract pairs join as their own dataset (RETAIN); with
    finetune.hard_negatives.weight, the mined triplets (mining.Mined.triplets) as MINED."""
    import polars as pl
    from datasets import Dataset, DatasetDict

    losses.check_combination(finetune)
    grouped = losses.batch_sampler(finetune) == "group_by_label"
    sets = {kind: Dataset.from_dict(kind_frame(kind).to_dict(as_series=False)) for kind in finetune.train_data}
    if finetune.retain_title_abstract and "title_abstract" not in finetune.train_data:
        retain = kind_frame("title_abstract")
        if grouped:
            # The trainer's one sampler groups every dataset by label: these pairs carry their paper's
            # label (MNRL ignores it), so their in-batch negatives are same-field abstracts.
            labels = read_texts(KINDS["title_abstract"].file("train"), ["label"])["label"]
            retain = retain.with_columns(label=labels.rank("dense").cast(pl.Int64))
        sets[RETAIN] = Dataset.from_dict(retain.to_dict(as_series=False))
    if finetune.hard_negatives.weight and mined is None:
        raise ValueError("finetune.hard_negatives.weight > 0: pass the mined triplets (training.mining.mine_train_split)")
    if finetune.hard_negatives.weight and mined.height:
        # TripletLoss ignores labels; the label-grouping sampler needs them (as for RETAIN above).
        mined = mined.with_columns(pl.col("label").rank("dense").cast(pl.Int64)) if grouped else mined.drop("label")
        sets[MINED] = Dataset.from_dict(mined.to_dict(as_series=False))
    return next(iter(sets.values())) if len(sets) == 1 else DatasetDict(sets)


def dataset_size(dataset: Dataset | DatasetDict) -> int:
    return sum(len(d) for d in dataset.values()) if isinstance(dataset, dict) else len(dataset)
