"""params.yaml `make_triplets` (the make_triplets stage, with shared.seed)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import PlainValidator, model_validator

from arxiv_embed.schema.base import Fraction, PositiveInt, Section
from arxiv_embed.schema.shared import Shared


def _count(value: object) -> int | float | str:
    # One rule, one message: as a union, a bad value got a line per member, named by pydantic's internal types.
    if type(value) is float and value.is_integer() and value > 0:
        # DVC compares params by value: 1000 -> 1000.0 would rerun nothing, yet make 1000 per paper instead of 1000.
        raise ValueError(f"{value} is a whole number written as a decimal, which would mean {value:g} per paper: write a count "
                         f"as an integer ({value:.0f}), a number per paper with its fraction (1.5), or 'all' for one per paper")
    if value == "all" or (type(value) in (int, float) and math.isfinite(value) and value >= 0):  # type: ignore[arg-type]
        return value  # type: ignore[return-value]
    raise ValueError("must be a count (an integer such as 3000), a number per paper (a decimal such as 0.5) or 'all', "
                     "and not negative")


# How many of a kind a split gets: an integer is a count; a decimal number (0.5, 1.2) is that many per
# paper of the split (of the train sample, for train), so the data grows with the papers; "all" = one per paper.
Count = Annotated[int | float | Literal["all"], PlainValidator(_count)]


class PerSplit(Section):
    train: Count
    eval: Count
    test: Count


class MakeTriplets(Section):
    max_train_papers: PositiveInt | None  # stratified, seeded sample of the train split; null = every train paper
    triplets_per_split: PerSplit
    hard_negative_fraction: Fraction
    same_label_pairs_per_split: PerSplit
    graded_pairs_per_split: PerSplit

    @model_validator(mode="after")
    def _test_triplets(self) -> MakeTriplets:
        if self.triplets_per_split.test == 0:  # else the triplet lens (and push's gate on it) scores an empty set: NaN
            raise ValueError("make_triplets.triplets_per_split.test must be above 0: evaluate's triplet lens scores them")
        return self


class MakeTripletsParams(Section):
    shared: Shared
    make_triplets: MakeTriplets
