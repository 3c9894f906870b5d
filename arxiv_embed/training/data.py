"""The training data finetune reads: which files, and as which frames.

The losses' data kinds and their checks live in losses.py; training/recipe.py turns these frames
into the objectives both modes train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arxiv_embed import paths
from arxiv_embed.files import read_table
from arxiv_embed.schema.finetune import Finetune
from arxiv_embed.training import losses

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
    # Pairs scored by arXiv's structure (make_triplets.graded_pairs_per_split): same primary category 1.0 >
    # shared cross-list category > same archive > other 0.0; `same_label` is the 1/0 version.
    "graded_pairs": Kind(lambda split: paths.training_file(split, "graded_pairs"), {"anchor": "anchor", "positive": "positive", "score": "score"}),
    "binary_pairs": Kind(lambda split: paths.training_file(split, "graded_pairs"), {"anchor": "anchor", "positive": "positive", "label": "same_label"}),
}
TEXT_COLUMNS = {name: tuple(kind.columns.values()) for name, kind in KINDS.items()}


def train_kinds(finetune: Finetune) -> list[str]:
    """The kinds the recipe (training/recipe.py) and the mining read, each once: finetune.train_data,
    title_abstract when retained, labels and same_label when hard negatives are mined from them."""
    kinds = list(finetune.train_data)
    if finetune.retain_title_abstract:
        kinds.append("title_abstract")
    if finetune.hard_negatives.weight:  # mined from same_label pairs over the train split (mining.py)
        kinds += ["labels", "same_label"]
    return list(dict.fromkeys(kinds))


def data_files(finetune: Finetune) -> tuple[list[Path], list[Path]]:
    """(training files, evaluation files) this configuration reads."""
    losses.check_combination(finetune)
    train = [KINDS[kind].file("train") for kind in train_kinds(finetune)]
    evaluation = [paths.training_file("eval", "triplets")]
    if finetune.mode == "full" and finetune.full.eval_retrieval:
        evaluation.append(paths.training_file("eval", "title_abstract"))
    return train, evaluation


def read_texts(path: Path, columns: tuple[str, ...] | list[str]) -> pl.DataFrame:
    """The named columns of a make_triplets (or split) output, checked as every stage checks its inputs."""
    return read_table(path, columns, "make_triplets")


def kind_frame(kind: str, split: str = "train") -> pl.DataFrame:
    """One data kind as a frame with the dataset's column names; labels become int ids (sorted label order)."""
    import polars as pl  # here, not at the top: the trainer's wiring imports this module on GPU images without polars

    spec = KINDS[kind]
    frame = read_texts(spec.file(split), list(spec.columns.values())).select(
        pl.col(source).alias(name) for name, source in spec.columns.items()
    )
    if kind == "labels":
        from arxiv_embed.data.columns import OTHER

        # `other` (split's merged rare labels) is no subject: its papers are no label's positives and it gets no prototype.
        frame = frame.filter(pl.col("label") != OTHER)
        labels = sorted(frame["label"].unique().to_list())
        frame = frame.with_columns(pl.col("label").replace_strict(labels, list(range(len(labels))), return_dtype=pl.Int64))
    return frame


def dataset_size(dataset: Dataset | DatasetDict) -> int:
    return sum(len(d) for d in dataset.values()) if isinstance(dataset, dict) else len(dataset)
