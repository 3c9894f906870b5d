"""params.yaml `make_triplets` (the make_triplets stage, with shared.seed)."""

from __future__ import annotations

from arxiv_embed.schema.base import Fraction, NonNegativeInt, Section
from arxiv_embed.schema.shared import Shared


class PerSplit(Section):
    train: NonNegativeInt
    eval: NonNegativeInt
    test: NonNegativeInt


class MakeTriplets(Section):
    triplets_per_split: PerSplit
    hard_negative_fraction: Fraction
    same_label_pairs_per_split: PerSplit
    graded_pairs_per_split: PerSplit


class MakeTripletsParams(Section):
    shared: Shared
    make_triplets: MakeTriplets
