"""split: clean papers -> train / eval / test, each paper in exactly one split (data/splitting.py).

Labels with fewer than split.min_papers_per_label papers are merged into "other" or dropped first.
"""

from __future__ import annotations

import time

import polars as pl

from arxiv_embed import paths
from arxiv_embed.files import atomic_path, read_table, write_json
from arxiv_embed.schema.base import load
from arxiv_embed.data.order import stable_order
from arxiv_embed.data.columns import OTHER, same_abstract_key
from arxiv_embed.data.splitting import DATE_COLUMNS, assign_splits
from arxiv_embed.schema.split import SplitParams
from arxiv_embed.errors import START_OVER, UserError, run
from arxiv_embed.progress import Progress

HASH_SLICE = 250_000  # abstracts hashed per step between progress lines (~5 s on 2 cores)

def main() -> None:
    params = load(SplitParams)
    cfg, label = params.split, params.shared.label
    primary = DATE_COLUMNS[cfg.time_field]
    fallback = next(column for column in DATE_COLUMNS.values() if column != primary)
    # A missing file, column or paper is one line naming the stage to rerun (read_table); a date may be null.
    keys = read_table(paths.PAPERS, ["id", label, primary, fallback], "clean", nullable=(primary, fallback))
    keys = keys.select("id", pl.col(label).alias("label"), primary, fallback)
    papers = pl.scan_parquet(paths.PAPERS)
    # A slice at a time, with progress lines: at 2.7M papers hashing the abstracts takes about a minute.
    meter = Progress("split: hashed", keys.height, "abstracts (copies share a split)")
    parts = []
    for start in range(0, max(keys.height, 1), HASH_SLICE):
        parts.append(papers.slice(start, HASH_SLICE).select("id", abstract_key=same_abstract_key(pl.col("abstract")))
                     .collect(engine="streaming"))
        meter.update(parts[-1].height)
    meter.done()
    abstract_keys = pl.concat(parts)
    keys = keys.join(abstract_keys, on="id", maintain_order="left")
    keys = keys.with_columns(stable_order(keys["id"], params.shared.seed), date=pl.coalesce(primary, fallback))

    # 1. Labels too small to split: merge into "other" or drop, and say which.
    counts = keys["label"].value_counts()
    rare = counts.filter(pl.col("count") < cfg.min_papers_per_label).sort("label")
    is_rare = pl.col("label").is_in(rare["label"].implode())
    dropped = keys.filter(is_rare) if cfg.rare_labels == "drop" else keys.clear()
    keys = keys.filter(~is_rare) if cfg.rare_labels == "drop" else keys.with_columns(label=pl.when(is_rare).then(pl.lit(OTHER)).otherwise("label"))
    if counts.height < 2:
        raise UserError(f"every one of the {counts['count'].sum()} papers has the label {counts['label'][0]} (shared.label="
                        f"{label}): the triplets and the label lenses need two labels; use papers of more categories")
    # make_triplets and every label lens compare labels (`other`, rare ones merged, is none): refused here, a stage earlier
    if keys["label"].filter(keys["label"] != OTHER).n_unique() < 2:
        largest = ", ".join(f"{name} {count}" for name, count in counts.sort("count", "label", descending=[True, False]).head(3).iter_rows())
        raise UserError(f"{counts.height - rare.height} of the {counts.height} labels of the {counts['count'].sum()} papers have "
                        f"split.min_papers_per_label={cfg.min_papers_per_label} papers or more (the largest: {largest}); the "
                        "triplets and the label lenses need two: use more papers (download.max_records), lower "
                        "split.min_papers_per_label, or papers of more categories")

    # 2. Assign every paper to exactly one split (copies of one abstract to the same one).
    keys = assign_splits(keys, cfg)
    copies = keys.filter(pl.col("abstract_key").is_duplicated())

    # 3. Write each split with the papers' columns plus `label` and `abstract_key`, in the clean table's order.
    with atomic_path(paths.SPLIT_DIR) as out:
        out.mkdir()
        for split in paths.SPLITS:
            started = time.monotonic()
            chosen = keys.lazy().filter(pl.col("split") == split).select("id", "label", "abstract_key")
            papers.join(chosen, on="id", maintain_order="left").sink_parquet(out / paths.split_file(split).name)
            # One line per split written: on the whole snapshot each takes seconds to tens of seconds.
            print(f"split: wrote {split} in {time.monotonic() - started:.1f} s", flush=True)
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
        # Papers sharing an abstract with another (clean drops only exact title + abstract repeats), all in one split.
        "same_abstract": {"papers": copies.height, "abstracts": copies["abstract_key"].n_unique()},
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
    if copies.height:
        print(f"  {copies.height} papers share their abstract with another ({metrics['same_abstract']['abstracts']} abstracts): "
              "each abstract's papers are in one split, " + ("the most held-out one any of them drew" if cfg.method == "stratified"
                                                              else "the oldest one's"))
    if cfg.method == "time" and metrics["time"]["papers_using_fallback"]:
        print(f"  {metrics['time']['papers_using_fallback']} papers have no {primary}: used their {fallback}")
    if cfg.method == "time" and metrics["time"]["papers_without_date"]:
        print(f"  {metrics['time']['papers_without_date']} papers have no date at all: in train, unless a copy of their abstract is held out")
    if missing := metrics["labels_missing_from_a_split"]:
        print(f"  {len(missing)} labels are missing from a split (see {paths.metrics_file('split')}): {', '.join(missing[:5])}"
              f"{', ...' if len(missing) > 5 else ''}")


if __name__ == "__main__":
    run(main, "split", START_OVER)
