"""Hard negatives mined with the base model, never from the anchor's label.

sentence-transformers' `mine_hard_negatives` ranks the training abstracts by the base model's cosine
similarity to each anchor and returns the nearest candidates; the library knows nothing of labels,
so it is asked for `candidates` of them and the first that is neither of the anchor's label nor
listed in it (one of its categories, or their archive) becomes the negative. A paper of the
same label is a positive for the category lenses, not a negative: training it away is what
made MNRL on same-label pairs useless (issue 11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from arxiv_embed import paths
from arxiv_embed.errors import TrainingSetupError
from arxiv_embed.files import read_table

if TYPE_CHECKING:
    import polars as pl
    from sentence_transformers import SentenceTransformer

MINED_COLUMNS = ("anchor", "positive", "negative")


class CachedEncoder:
    """Stands in for the model in `mine_hard_negatives`: serves vectors already computed (mode=adapter
    embeds every training text once; mining must not encode them again). Anything else, such as
    `similarity`, is the model's own."""

    def __init__(self, model: SentenceTransformer, index: dict[str, int], vectors: np.ndarray) -> None:
        self._model, self._index, self._vectors = model, index, vectors

    def encode_query(self, texts: list[str], **_: Any) -> np.ndarray:
        return self._vectors[[self._index[text] for text in texts]]

    encode_document = encode_query

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@dataclass(frozen=True)
class Mined:
    triplets: pl.DataFrame  # anchor, positive, negative (abstracts), label (the anchor's)
    anchors: int  # distinct (anchor, positive) pairs mined for
    without_negative: int  # pairs whose `candidates` nearest abstracts were all of the anchor's label (not trained on)
    mean_rank: float  # mean position of the chosen negative among the nearest candidates (0 = the nearest)

    def describe(self) -> str:
        return (f"mined {self.triplets.height} hard negatives for {self.anchors} same-label pairs "
                f"({self.without_negative} without one among the nearest candidates)")

    def summary(self) -> dict[str, float]:
        return {"mined_triplets": self.triplets.height, "mined_without_negative": self.without_negative,
                "mined_negative_mean_rank": round(self.mean_rank, 2)}


def mine_label_negatives(model: SentenceTransformer | CachedEncoder, pairs: pl.DataFrame, papers: pl.DataFrame,
                         candidates: int, batch_size: int = 64) -> Mined:
    """(anchor, positive) same-label pairs -> (anchor, positive, negative) with the nearest abstract of
    another label as the negative.

    pairs: anchor, positive (abstracts), label. papers: the abstracts to mine from, with label and
    categories (a negative may not be cross-listed in the anchor's label). Pairs with no eligible
    negative among the `candidates` nearest are counted, not trained on (Mined.without_negative).
    """
    import polars as pl
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    corpus = papers["abstract"].to_list()
    if candidates >= len(corpus):
        raise TrainingSetupError(f"finetune.hard_negatives.candidates={candidates} needs more train abstracts than the "
                                 f"{len(corpus)} there are: lower it")
    dataset = Dataset.from_dict({"anchor": pairs["anchor"].to_list(), "positive": pairs["positive"].to_list()})
    # n-tuple output with no margin or score filter: every distinct pair gets its `candidates` nearest, best first.
    ranked = mine_hard_negatives(
        dataset, model, anchor_column_name="anchor", positive_column_name="positive", corpus=corpus,
        num_negatives=candidates, sampling_strategy="top", output_format="n-tuple", batch_size=batch_size, verbose=False,
    )
    row_of = {text: row for row, text in enumerate(corpus)}
    columns = [f"negative_{i}" for i in range(1, candidates + 1)]
    # What a paper belongs to: its label, every category it is listed in, and their archives.
    member_of = [{label, *cats, *(c.split(".")[0] for c in cats)} for label, cats in zip(papers["label"], papers["categories"])]
    anchor_label = dict(zip(pairs["anchor"], pairs["label"]))
    found = ranked.to_dict()
    chosen, ranks, missing = [], [], 0
    for i, (anchor, positive) in enumerate(zip(found["anchor"], found["positive"])):
        label = anchor_label[anchor]
        for rank, column in enumerate(columns):
            row = row_of.get(found[column][i])
            if row is not None and label not in member_of[row]:
                chosen.append((anchor, positive, corpus[row], label))
                ranks.append(rank)
                break
        else:
            missing += 1
    triplets = pl.DataFrame(chosen, schema=dict.fromkeys([*MINED_COLUMNS, "label"], pl.String), orient="row")
    return Mined(triplets, len(ranked), missing, float(np.mean(ranks)) if ranks else 0.0)


def mine_train_split(model: SentenceTransformer | CachedEncoder, candidates: int, batch_size: int = 64) -> Mined:
    """finetune.hard_negatives on the train split: make_triplets' same_label pairs as anchors and
    positives, every train abstract as a candidate negative."""
    pairs = read_table(paths.training_file("train", "same_label"), ["anchor", "positive", "label"], "make_triplets")
    papers = read_table(paths.split_file("train"), ["abstract", "label", "categories"], "split")
    if pairs.is_empty():
        raise TrainingSetupError(f"finetune.hard_negatives.weight > 0 mines negatives for make_triplets' same_label pairs, but "
                                 f"{paths.training_file('train', 'same_label')} has none: raise make_triplets.same_label_pairs_per_split.train "
                                 "or set finetune.hard_negatives.weight to 0")
    return mine_label_negatives(model, pairs, papers, candidates, batch_size)
