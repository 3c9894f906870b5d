"""Hard negatives mined with the base model, never from the anchor's label.

The train sample's abstracts are ranked by the base model's cosine similarity to each anchor
(FAISS exact top-k over embed_base's cached vectors: nothing is encoded here, and no anchor x corpus
score matrix is built), and the first of the `candidates` nearest that is neither of the anchor's
label nor listed in it (one of its categories, or their archive) becomes the negative. A paper of
the same label is a positive for the category lenses, not a negative: training it away is what
made MNRL on same-label pairs useless (issue 11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from arxiv_embed import paths
from arxiv_embed.errors import TrainingSetupError
from arxiv_embed.files import read_table
from arxiv_embed.progress import Progress

if TYPE_CHECKING:
    import polars as pl

    from arxiv_embed.embeddings import TextVectors

MINED_COLUMNS = ("anchor", "positive", "negative")
QUERY_BLOCK = 8192  # anchors searched per FAISS call: a progress line can come between them


@dataclass(frozen=True)
class Mined:
    triplets: pl.DataFrame  # anchor, positive, negative (abstracts), label (the anchor's)
    anchors: int  # distinct (anchor, positive) pairs mined for
    without_negative: int  # pairs whose `candidates` nearest abstracts were all of the anchor's label (not trained on)
    mean_rank: float | None  # mean position of the chosen negative among the nearest candidates (0 = the nearest); None: none mined

    def describe(self) -> str:
        return (f"mined {self.triplets.height} hard negatives for {self.anchors} same-label pairs "
                f"({self.without_negative} without one among the nearest candidates)")

    def summary(self) -> dict[str, float]:
        return {"mined_triplets": self.triplets.height, "mined_without_negative": self.without_negative,
                "mined_negative_mean_rank": None if self.mean_rank is None else round(self.mean_rank, 2)}


def nearest(vectors: np.ndarray, queries: np.ndarray, k: int, what: str = "finetune: mined") -> np.ndarray:
    """Rows of `vectors` nearest each query by inner product (Q x k, best first): FAISS exact search."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    meter, parts = Progress(what, len(queries), "anchors"), [np.empty((0, k), dtype=np.int64)]
    for start in range(0, len(queries), QUERY_BLOCK):
        block = np.ascontiguousarray(queries[start:start + QUERY_BLOCK], dtype=np.float32)
        parts.append(index.search(block, k)[1].astype(np.int64))
        meter.update(len(block))
    meter.done()
    return np.concatenate(parts)


def mine_label_negatives(vectors: TextVectors, pairs: pl.DataFrame, papers: pl.DataFrame, candidates: int) -> Mined:
    """(anchor, positive) same-label pairs -> (anchor, positive, negative) with the nearest abstract of
    another label as the negative.

    vectors: the base model's cached vectors of every abstract here. pairs: anchor, positive
    (abstracts), label. papers: the abstracts to mine from, with label and categories (a negative may
    not be cross-listed in the anchor's label). Pairs with no eligible negative among the
    `candidates` nearest are counted, not trained on (Mined.without_negative).
    """
    import polars as pl

    corpus = papers["abstract"].to_list()
    if candidates >= len(corpus):
        raise TrainingSetupError(f"finetune.hard_negatives.candidates={candidates} needs more train abstracts than the "
                                 f"{len(corpus)} there are: lower it")
    pairs = pairs.unique(["anchor", "positive"], maintain_order=True)
    # One more than `candidates`: an anchor is in the corpus and is its own nearest hit, which is no candidate.
    ranked = nearest(vectors(corpus), vectors(pairs["anchor"]), candidates + 1)
    # What a paper belongs to: its label, every category it is listed in, and their archives.
    member_of = [{label, *cats, *(c.split(".")[0] for c in cats)} for label, cats in zip(papers["label"], papers["categories"])]
    chosen, ranks, missing = [], [], 0
    for (anchor, positive, label), rows in zip(pairs.select("anchor", "positive", "label").iter_rows(), ranked):
        for rank, row in enumerate([row for row in rows if row < 0 or corpus[row] != anchor][:candidates]):
            if row >= 0 and label not in member_of[row]:
                chosen.append((anchor, positive, corpus[row], label))
                ranks.append(rank)
                break
        else:
            missing += 1
    triplets = pl.DataFrame(chosen, schema=dict.fromkeys([*MINED_COLUMNS, "label"], pl.String), orient="row")
    return Mined(triplets, pairs.height, missing, float(np.mean(ranks)) if ranks else None)


def mine_train_split(vectors: TextVectors, candidates: int) -> Mined:
    """finetune.hard_negatives on the train sample: make_triplets' same_label pairs as anchors and
    positives, every sampled train abstract as a candidate negative."""
    pairs = read_table(paths.training_file("train", "same_label"), ["anchor", "positive", "label"], "make_triplets")
    papers = read_table(paths.TRAIN_SAMPLE, ["abstract", "label", "categories"], "make_triplets")
    if pairs.is_empty():
        raise TrainingSetupError(f"finetune.hard_negatives.weight > 0 mines negatives for make_triplets' same_label pairs, but "
                                 f"{paths.training_file('train', 'same_label')} has none: raise make_triplets.same_label_pairs_per_split.train "
                                 "or set finetune.hard_negatives.weight to 0")
    mined = mine_label_negatives(vectors, pairs, papers, candidates)
    if mined.triplets.is_empty():  # else the mined objective silently drops out of a run that asked for it
        raise TrainingSetupError(f"finetune.hard_negatives: none of the {candidates} nearest abstracts of any of the {mined.anchors} "
                                 "same-label anchors is of another label: raise finetune.hard_negatives.candidates, or set "
                                 "finetune.hard_negatives.weight to 0")
    return mined
