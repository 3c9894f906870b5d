"""The training data finetune reads: which files, and as which datasets.

The losses' data kinds and their checks live in losses.py; this module turns files into datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from arxiv_embed import paths
from arxiv_embed.params import Finetune
from arxiv_embed.errors import TrainingSetupError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

# The text columns of each make_triplets kind, in the order the losses read them
# (anchor, positive[, negative]); the id/label columns stay out of the batches.
TEXT_COLUMNS = {
    "triplets": ("anchor", "positive", "negative"),
    "title_abstract": ("anchor", "positive"),
    "same_label": ("anchor", "positive"),
}


def check_combination(finetune: Finetune) -> None:
    """Reject loss/data/batch combinations the library would fail on later (or silently mis-train)."""
    if len(set(finetune.train_data)) != len(finetune.train_data):
        raise TrainingSetupError(f"finetune.train_data={finetune.train_data} lists a kind twice")
    if finetune.loss == "triplet" and finetune.train_data != ["triplets"]:
        raise TrainingSetupError(
            f"finetune.loss=triplet needs (anchor, positive, negative) rows, but finetune.train_data="
            f"{finetune.train_data} has pair kinds: set finetune.train_data to [triplets], or use loss mnrl/cached_mnrl for pairs"
        )
    if finetune.loss == "batch_hard" and (finetune.batch_size < 4 or finetune.batch_size % 2):
        raise TrainingSetupError(
            f"finetune.loss=batch_hard groups 2 papers per label in a batch: finetune.batch_size must be even and >= 4 (got {finetune.batch_size})"
        )
    if finetune.loss == "cached_mnrl" and finetune.mini_batch_size > finetune.batch_size:
        raise TrainingSetupError(
            f"finetune.mini_batch_size={finetune.mini_batch_size} > finetune.batch_size={finetune.batch_size}: "
            "cached_mnrl splits each batch into mini-batches, so the mini-batch must be smaller"
        )


def data_files(finetune: Finetune) -> tuple[list[Path], list[Path]]:
    """(training files, evaluation files) this configuration reads."""
    if finetune.loss == "batch_hard":
        train = [paths.split_file("train")]
    else:
        train = [paths.training_file("train", kind) for kind in finetune.train_data]
    evaluation = [paths.training_file("eval", "triplets")]
    if finetune.eval_retrieval:
        evaluation.append(paths.training_file("eval", "title_abstract"))
    return train, evaluation


def read_texts(path: Path, columns: tuple[str, ...] | list[str]) -> pl.DataFrame:
    """The named columns of a parquet file, refusing missing files/columns and empty or null texts."""
    if not path.exists():
        raise TrainingSetupError(f"{path} is missing: run `dvc repro make_triplets` (or the stage that writes it) first")
    schema = pl.read_parquet_schema(path)
    if missing := [c for c in columns if c not in schema]:
        raise TrainingSetupError(f"{path} has no column(s) {missing} (it has {list(schema)}): rerun the stage that writes it")
    frame = pl.read_parquet(path, columns=list(columns))
    if frame.height == 0:
        raise TrainingSetupError(f"{path} has no rows: check make_triplets' params (triplets_per_split, same_label_pairs_per_split)")
    text_columns = [c for c in columns if frame.schema[c] == pl.String]
    bad = frame.select(pl.any_horizontal(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") for c in text_columns).sum()).item()
    if bad:
        raise TrainingSetupError(f"{path}: {bad} of {frame.height} rows have a null or empty text: rerun the stage that writes it")
    return frame


def label_dataset(path: Path) -> Dataset:
    """(text, label) rows for batch-hard losses: each training paper's abstract and its label as an int id."""
    from datasets import Dataset

    frame = read_texts(path, ["abstract", "label"])
    labels = sorted(frame["label"].unique().to_list())
    ids = frame["label"].replace_strict(labels, list(range(len(labels))), return_dtype=pl.Int64)
    return Dataset.from_dict({"text": frame["abstract"].to_list(), "label": ids.to_list()})


def train_dataset(finetune: Finetune) -> Dataset | DatasetDict:
    """The training data for finetune.loss: one Dataset, or a DatasetDict of kinds (multi-dataset
    training: each batch comes from one kind, so pairs and triplets never share a batch)."""
    from datasets import Dataset, DatasetDict

    train_files, _ = data_files(finetune)
    if finetune.loss == "batch_hard":
        return label_dataset(train_files[0])
    sets = {
        kind: Dataset.from_dict(read_texts(path, TEXT_COLUMNS[kind]).to_dict(as_series=False))
        for kind, path in zip(finetune.train_data, train_files)
    }
    return next(iter(sets.values())) if len(sets) == 1 else DatasetDict(sets)


def dataset_size(dataset: Dataset | DatasetDict) -> int:
    return sum(len(d) for d in dataset.values()) if isinstance(dataset, dict) else len(dataset)
