"""The held-out data every lens reads: a stratified, seeded sample of the test split (at most
evaluate.max_test_papers, so scoring stays bounded however large the data), a label-balanced slice of
make_triplets' train sample (for the classifier), and the test triplets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from arxiv_embed import paths
from arxiv_embed.data.order import stable_order
from arxiv_embed.data.sampling import read_stratified_sample
from arxiv_embed.embeddings import distinct_texts
from arxiv_embed.files import read_table


@dataclass(frozen=True)
class EvalData:
    test: pl.DataFrame  # id, title, abstract, label
    train: pl.DataFrame  # id, abstract, label, rank (position of the paper within its label)
    triplets: pl.DataFrame  # anchor, positive, negative, negative_type
    test_split_papers: int  # the test split the sample was drawn from

    def columns(self) -> list[pl.Series]:
        """Every text column a lens embeds."""
        return [self.test["abstract"], self.test["title"], self.train["abstract"],
                *(self.triplets[name] for name in ("anchor", "positive", "negative"))]

    def texts(self) -> list[str]:
        """Every distinct text a lens embeds, in a stable order."""
        return distinct_texts(self.columns())

    def describe_sample(self) -> str:
        """What evaluate.md says the test set is."""
        if self.test.height == self.test_split_papers:
            return f"Test papers: all {self.test_split_papers:,} of the test split."
        return (f"Test papers: {self.test.height:,}, a sample of the test split's {self.test_split_papers:,} papers "
                "stratified by label (each label keeps its share) and seeded by shared.seed (evaluate.max_test_papers).")

    def fingerprint(self) -> str:
        """sha256 of every text and label the lenses read, in order: two models are compared only on the same items."""
        digest = hashlib.sha256()
        for column in (*self.columns(), self.test["label"], self.train["label"], self.triplets["negative_type"]):
            for value in column:
                digest.update(value.encode() + b"\x1f")
            digest.update(b"\x1e")
        return digest.hexdigest()

    def summary(self) -> dict[str, int]:
        return {
            "test_papers": self.test.height,
            "test_split_papers": self.test_split_papers,
            "labels": self.test["label"].n_unique(),
            "train_papers": self.train.height,
            "test_triplets": self.triplets.height,
        }


def balanced_sample(papers: pl.DataFrame, max_papers: int, seed: int) -> pl.DataFrame:
    """Up to `max_papers`, dealt round-robin over labels in stable_order of their `id` (whatever the rows' order).

    Small labels keep all their papers and large ones cannot crowd them out. `rank` (the paper's
    position within its label) makes the learning curve's subsets nested: n per label = rank < n.
    """
    keyed = papers.with_columns(stable_order(papers["id"], seed, "probe").alias("_key"))
    ranked = keyed.with_columns(rank=(pl.col("_key").rank("ordinal").over("label") - 1).cast(pl.Int64))
    return ranked.sort("rank", "_key").head(max_papers).drop("_key")


def load_eval_data(max_test_papers: int, max_train_papers: int, seed: int) -> EvalData:
    """evaluate_base, evaluate and embed_base draw the same samples from the same params."""
    # In id order: the lenses' bootstrap draws rows by position, and the input's row order must not matter.
    test, test_split_papers = read_stratified_sample(paths.split_file("test"), ["id", "title", "abstract", "label"],
                                                     max_test_papers, seed, "split")
    train = read_table(paths.TRAIN_SAMPLE, ["id", "abstract", "label"], "make_triplets")
    triplets = read_table(
        paths.training_file("test", "triplets"), ["anchor", "positive", "negative", "negative_type"], "make_triplets"
    )
    return EvalData(test, balanced_sample(train, max_train_papers, seed), triplets, test_split_papers)
