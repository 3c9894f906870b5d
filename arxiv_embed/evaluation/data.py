"""The held-out data every lens reads: the test split, a label-balanced slice of the train split
(for the classifier), and the test triplets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from arxiv_embed import paths
from arxiv_embed.files import read_table


@dataclass(frozen=True)
class EvalData:
    test: pl.DataFrame  # title, abstract, label
    train: pl.DataFrame  # abstract, label, rank (position of the paper within its label)
    triplets: pl.DataFrame  # anchor, positive, negative, negative_type

    def texts(self) -> list[str]:
        """Every distinct text a lens embeds, in a stable order."""
        columns = [self.test["abstract"], self.test["title"], self.train["abstract"]]
        columns += [self.triplets[name] for name in ("anchor", "positive", "negative")]
        return pl.concat([column.alias("text") for column in columns]).unique(maintain_order=True).to_list()

    def summary(self) -> dict[str, int]:
        return {
            "test_papers": self.test.height,
            "labels": self.test["label"].n_unique(),
            "train_papers": self.train.height,
            "test_triplets": self.triplets.height,
        }


def balanced_sample(papers: pl.DataFrame, max_papers: int, seed: int) -> pl.DataFrame:
    """Up to `max_papers`, dealt round-robin over labels in a seeded random order.

    Small labels keep all their papers and large ones cannot crowd them out. `rank` (the paper's
    position within its label) makes the learning curve's subsets nested: n per label = rank < n.
    """
    rng = np.random.default_rng(seed)
    shuffled = papers[rng.permutation(papers.height)].with_row_index("_order")
    ranked = shuffled.with_columns(rank=pl.int_range(pl.len()).over("label"))
    return ranked.sort("rank", "_order").head(max_papers).drop("_order")


def load_eval_data(max_train_papers: int, seed: int) -> EvalData:
    test = read_table(paths.split_file("test"), ["title", "abstract", "label"], "split")
    train = read_table(paths.split_file("train"), ["abstract", "label"], "split")
    triplets = read_table(
        paths.training_file("test", "triplets"), ["anchor", "positive", "negative", "negative_type"], "make_triplets"
    )
    return EvalData(test, balanced_sample(train, max_train_papers, seed), triplets)
