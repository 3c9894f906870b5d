"""clean's de-duplication: which usable records are dropped as duplicates, in bounded memory."""

from __future__ import annotations

import polars as pl

KEYS_PER_BUCKET = 250_000  # records de-duplicated at a time (~100 MB); the full snapshot takes ~11 buckets


def decide_duplicates(parts: pl.LazyFrame) -> pl.DataFrame:
    """(line, id, reason) of every usable record that is not kept, sorted by line: filtered ones
    (withdrawn, word counts) and duplicates. One id keeps its latest record (update_date, then
    version count, then line); one normalised title+abstract keeps its first submitted (first version's date,
    then the smallest id: a string order, where an old-style id such as hep-th/9901001 follows every new-style one).

    Each rule runs per hash bucket of its key (id; title hash), read from the Parquet parts, so
    memory follows the bucket's size, not the input's (grouping all 2.7M snapshot ids at once takes
    about 1 GB).
    """
    n_buckets = max(1, -(-parts.select(pl.len()).collect().item() // KEYS_PER_BUCKET))

    def bucket(key: str, b: int) -> pl.Expr:
        return pl.col(key).hash(seed=0) % n_buckets == b

    by_age = ["id", "update_date", "n_versions", "line"]
    duplicate_id = pl.concat(
        parts.filter(bucket("id", b)).select(by_age).collect(engine="streaming")
        .sort(by_age).filter(~pl.col("id").is_last_distinct()).select("line")
        for b in range(n_buckets)
    )["line"].implode()  # fmt: skip
    by_text = ["title_hash", "text_hash", "first_version_date", "id", "line"]
    usable = parts.filter(pl.col("reason").is_null() & ~pl.col("line").is_in(duplicate_id))
    duplicate_text = pl.concat(
        usable.filter(bucket("title_hash", b)).select(by_text).collect(engine="streaming")
        .sort(by_text, nulls_last=True).filter(~pl.struct("title_hash", "text_hash").is_first_distinct()).select("line")
        for b in range(n_buckets)
    )["line"].implode()  # fmt: skip
    reason = (
        pl.when(pl.col("line").is_in(duplicate_id)).then(pl.lit("duplicate_id"))
        .when(pl.col("line").is_in(duplicate_text)).then(pl.lit("duplicate_text"))
        .otherwise("reason")
    )  # fmt: skip
    dropped = parts.select("line", "id", reason.alias("reason")).filter(pl.col("reason").is_not_null())
    return dropped.collect(engine="streaming").sort("line")
