"""split: clean papers -> train / eval / test, each paper in exactly one split.

`stratified` (default) splits every label in the same proportions, so rare labels still appear
in every split; `time` trains on the oldest papers and tests on the newest. The order within a
label comes from a hash of (seed, id), so the split does not depend on the input's row order.
Labels with fewer than split.min_papers_per_label papers are merged into "other" or dropped.
"""

from __future__ import annotations

import hashlib

import polars as pl

from arxiv_embed import paths
from arxiv_embed.files import atomic_path, write_json
from arxiv_embed.schema.base import load
from arxiv_embed.schema.split import Split, SplitParams
from arxiv_embed.errors import UserError, run

OTHER = "other"
DATE_COLUMNS = {"first_version": "first_version_date", "update_date": "update_date"}


def stable_order(ids: pl.Series, seed: int) -> pl.Series:
    """A random-looking key per paper that depends only on (seed, id), stable across versions."""
    digest = (hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in ids)
    return pl.Series("order", [int.from_bytes(d, "big") for d in digest], dtype=pl.UInt64)


def split_sizes(n: int, cfg: Split) -> tuple[int, int]:
    """(eval, test) papers out of n: at least one each when n >= 3, and at least one for train."""
    n_test = min(max(1, round(n * cfg.test_fraction)), max(n - 1, 0))
    n_eval = min(max(1, round(n * cfg.eval_fraction)), max(n - 1 - n_test, 0))
    return n_eval, n_test


def assign(rank: pl.Expr, n_eval: pl.Expr, n_test: pl.Expr) -> pl.Expr:
    """Rank 0.. (in the order that goes to test first) -> split name."""
    return pl.when(rank < n_test).then(pl.lit("test")).when(rank < n_test + n_eval).then(pl.lit("eval")).otherwise(pl.lit("train"))


def stratified(keys: pl.DataFrame, cfg: Split) -> pl.DataFrame:
    sizes = {label: split_sizes(n, cfg) for label, n in keys["label"].value_counts().iter_rows()}
    plan = pl.DataFrame(
        {"label": list(sizes), "n_eval": [e for e, _ in sizes.values()], "n_test": [t for _, t in sizes.values()]},
        schema_overrides={"n_eval": pl.UInt32, "n_test": pl.UInt32},
    )
    rank = pl.col("order").rank("ordinal").over("label") - 1
    return keys.join(plan, on="label").with_columns(split=assign(rank, pl.col("n_eval"), pl.col("n_test")))


def by_time(keys: pl.DataFrame, cfg: Split) -> pl.DataFrame:
    """Newest papers to test, the next newest to eval, the rest (and papers without a date) to train."""
    n_eval, n_test = split_sizes(keys.height, cfg)
    newest_first = keys.sort("date", "order", descending=True, nulls_last=True).with_row_index("rank")
    return newest_first.with_columns(split=assign(pl.col("rank"), pl.lit(n_eval), pl.lit(n_test)))


def main() -> None:
    params = load(SplitParams)
    cfg, label = params.split, params.shared.label
    primary = DATE_COLUMNS[cfg.time_field]
    fallback = next(column for column in DATE_COLUMNS.values() if column != primary)
    papers = pl.scan_parquet(paths.PAPERS)
    keys = papers.select("id", pl.col(label).alias("label"), primary, fallback).collect()
    if keys.is_empty():
        raise UserError(f"{paths.PAPERS} has no papers; check the clean stage's metrics/clean.json")
    keys = keys.with_columns(stable_order(keys["id"], params.shared.seed), date=pl.coalesce(primary, fallback))

    # 1. Labels too small to split: merge into "other" or drop, and say which.
    counts = keys["label"].value_counts()
    rare = counts.filter(pl.col("count") < cfg.min_papers_per_label).sort("label")
    is_rare = pl.col("label").is_in(rare["label"].implode())
    dropped = keys.filter(is_rare) if cfg.rare_labels == "drop" else keys.clear()
    keys = keys.filter(~is_rare) if cfg.rare_labels == "drop" else keys.with_columns(label=pl.when(is_rare).then(pl.lit(OTHER)).otherwise("label"))
    if keys.is_empty():
        raise UserError(f"every label has fewer than split.min_papers_per_label={cfg.min_papers_per_label} papers; lower it")

    # 2. Assign every paper to exactly one split.
    keys = stratified(keys, cfg) if cfg.method == "stratified" else by_time(keys, cfg)

    # 3. Write each split with the papers' columns plus `label`, in the clean table's order.
    with atomic_path(paths.SPLIT_DIR) as out:
        out.mkdir()
        for split in paths.SPLITS:
            chosen = keys.lazy().filter(pl.col("split") == split).select("id", "label")
            papers.join(chosen, on="id", maintain_order="left").sink_parquet(out / paths.split_file(split).name)
        dropped.select("id", "label", reason=pl.lit("rare_label")).write_ndjson(out / "rare_label_rejects.jsonl")

    per_split = {split: keys.filter(pl.col("split") == split) for split in paths.SPLITS}
    all_labels = set(keys["label"])
    metrics = {
        "method": cfg.method,
        "label": label,
        "papers_in": counts["count"].sum(),
        "papers_out": keys.height,
        **{split: frame.height for split, frame in per_split.items()},
        "labels": len(all_labels),
        "rare_labels": {
            "handling": cfg.rare_labels,
            "count": rare.height,
            "papers": int(rare["count"].sum()),
            "names": rare["label"].to_list(),
        },
        "labels_missing_from_a_split": sorted(all_labels - set.intersection(*(set(f["label"]) for f in per_split.values()))),
    }
    if cfg.method == "time":
        metrics["time"] = {
            "field": primary,
            "fallback_field": fallback,
            "papers_using_fallback": keys.filter(pl.col(primary).is_null() & pl.col(fallback).is_not_null()).height,
            "papers_without_date": keys.filter(pl.col("date").is_null()).height,
            **{f"{split}_dates": [str(frame["date"].min()), str(frame["date"].max())] for split, frame in per_split.items()},
        }
    write_json(paths.metrics_file("split"), metrics)
    sizes = ", ".join(f"{split} {metrics[split]}" for split in paths.SPLITS)
    print(f"split ({cfg.method}, by {label}): {sizes}; {metrics['labels']} labels")
    if rare.height:
        action = f"merged into '{OTHER}'" if cfg.rare_labels == "other" else f"dropped (see {paths.SPLIT_DIR}/rare_label_rejects.jsonl)"
        print(f"  {rare.height} labels under {cfg.min_papers_per_label} papers ({metrics['rare_labels']['papers']} papers) {action}")
    if cfg.method == "time" and metrics["time"]["papers_using_fallback"]:
        print(f"  {metrics['time']['papers_using_fallback']} papers have no {primary}: used their {fallback}")


if __name__ == "__main__":
    run(main, "split")
