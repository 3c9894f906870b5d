"""Stratified, seeded samples: where the CPU cannot afford every paper (train for finetune, test for
evaluate), a sample that keeps each label's share of the split, drawn the same way for a given seed."""

from __future__ import annotations

import numpy as np
import polars as pl


def quotas(counts: np.ndarray, size: int) -> np.ndarray:
    """Papers per label summing to `size` (<= counts.sum()), proportional to `counts` (largest remainder)."""
    total = int(counts.sum())
    if size >= total:
        return counts.copy()
    exact = counts * (size / total)
    base = np.floor(exact).astype(np.int64)
    extra = size - int(base.sum())
    # Ties in the remainder go to the larger label (then the earlier one): stable, seed-independent.
    order = np.lexsort((-counts, -(exact - base)))
    base[order[:extra]] += 1
    return base


def stratified_sample(papers: pl.DataFrame, max_papers: int | None, seed: int, by: str = "label") -> pl.DataFrame:
    """Up to `max_papers` rows with each `by` value's share of `papers` (proportional allocation),
    chosen at random within each value with numpy's Generator seeded by `seed`, in their original order.
    max_papers None (or >= the rows): every row."""
    if max_papers is None or max_papers >= papers.height:
        return papers
    counts = papers.group_by(by, maintain_order=True).len().sort(by)
    keep = dict(zip(counts[by].to_list(), quotas(counts["len"].to_numpy(), max_papers).tolist()))
    rng = np.random.default_rng(seed)
    shuffled = papers.with_row_index("_row")[rng.permutation(papers.height)]
    ranked = shuffled.with_columns(_rank=pl.int_range(pl.len()).over(by))
    quota = pl.col(by).replace_strict(keep, return_dtype=pl.Int64)
    return ranked.filter(pl.col("_rank") < quota).sort("_row").drop("_row", "_rank")
