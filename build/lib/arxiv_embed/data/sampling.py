"""Stratified, seeded samples: where the CPU cannot afford every paper (train for finetune, test for
evaluate), a sample that keeps each label's share of the split, drawn the same way for a given seed.

Papers are ranked by a hash of (seed, salt, id) (data/order.py), not by a permutation of the rows: the same
records give the same sample whatever order the input lists them in, and a snapshot with a few more papers gives
nearly the same sample, so a metrics diff between data versions shows the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from arxiv_embed.data.order import stable_order
from arxiv_embed.files import read_table


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
    """Up to `max_papers` rows with each `by` value's share of `papers` (proportional allocation): within
    each value, the first papers in stable_order of their `id`, kept in their input order.
    max_papers None (or >= the rows): every row."""
    if max_papers is None or max_papers >= papers.height:
        return papers
    counts = papers.group_by(by, maintain_order=True).len().sort(by)
    keep = dict(zip(counts[by].to_list(), quotas(counts["len"].to_numpy(), max_papers).tolist()))
    quota = pl.col(by).replace_strict(keep, return_dtype=pl.Int64)
    keyed = papers.with_columns(stable_order(papers["id"], seed, "sample").alias("_key"))
    return keyed.filter(pl.col("_key").rank("ordinal").over(by) <= quota).drop("_key")


def read_stratified_sample(path: Path, columns: list[str], max_papers: int | None, seed: int, produced_by: str) -> tuple[pl.DataFrame, int]:
    """(stratified_sample of a split file's papers, in id order; how many papers the file holds). Drawn on ids and
    labels alone, then only the sample's rows are read: the snapshot's 1.9M train abstracts (or 540k test ones) are
    never all in memory."""
    keys = read_table(path, ["id", "label"], produced_by)
    chosen = None if max_papers is None or max_papers >= keys.height else stratified_sample(keys, max_papers, seed)["id"]
    return read_table(path, columns, produced_by, ids=chosen).sort("id"), keys.height
