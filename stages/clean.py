"""clean: raw arXiv JSON lines -> one Parquet table of usable, de-duplicated papers.

Streams the input in batches of lines (bounded memory on the 4.6 GB snapshot), parses each batch
with polars against an explicit schema, and writes Parquet parts; de-duplication then works on a
small key table (line, id, dates, text hash) and a pass over the parts appends the kept rows in input
order. Every record that is not kept goes to the rejects file with its line number and reason.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import TextIO

import polars as pl

from stages.lib import paths
from stages.lib.io import atomic_path, write_json
from stages.lib.params import load_params
from stages.lib.records import KEY_COLUMNS, PAPER_COLUMNS, REASONS, line_batches, parse_batch, tidy, with_raw


class CleanError(SystemExit):
    """The input cannot be cleaned (empty, truncated, or the wrong file)."""


def decide_duplicates(keys: pl.DataFrame) -> pl.DataFrame:
    """Mark duplicates among usable records: one id keeps its latest record (update_date, then
    version count, then line); one normalised title+abstract keeps its smallest id."""
    latest = keys.group_by("id").agg(pl.col("line").sort_by(["update_date", "n_versions", "line"]).last())
    keys = keys.with_columns(
        reason=pl.when(pl.col("line").is_in(latest["line"].implode())).then("reason").otherwise(pl.lit("duplicate_id"))
    )
    candidates = keys.filter(pl.col("reason").is_null())
    first = candidates.group_by("title_hash", "text_hash").agg(pl.col("line").sort_by(["id", "line"]).first())
    return keys.with_columns(
        reason=pl.when(pl.col("reason").is_null() & ~pl.col("line").is_in(first["line"].implode()))
        .then(pl.lit("duplicate_text"))
        .otherwise("reason")
    )


class ParquetAppender:
    """One Parquet file written frame by frame (polars has no appending writer); zstd, as polars writes."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer = path, None

    def __enter__(self) -> ParquetAppender:
        return self

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table)

    def __exit__(self, *exc_info: object) -> None:
        if self.writer is not None:
            self.writer.close()


def main() -> None:
    params = load_params().clean
    counts: Counter[str] = Counter()
    malformed_lines: list[int] = []
    records_in = n_parts = 0
    paths.CLEAN_DIR.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=paths.CLEAN_DIR, prefix=".parts.") as parts_dir,
        atomic_path(paths.REJECTS) as rejects_path,
        rejects_path.open("w", encoding="utf-8") as rejects,
    ):
        # 1. Parse batch by batch; unusable records are rejected here, with their raw line.
        for first_line, chunk in line_batches(paths.RAW):
            batch, malformed = parse_batch(chunk, first_line)
            records_in += batch.height + len(malformed)
            malformed_lines += [row["line"] for row in malformed[: 5 - len(malformed_lines)]]
            batch = tidy(batch, params.min_abstract_words, params.max_abstract_words)
            unusable = batch.filter(pl.col("unusable").is_not_null()).select("line", reason="unusable", id="id").to_dicts()
            unusable = with_raw(unusable, chunk, first_line)
            write_rejects(rejects, counts, malformed + unusable)
            batch = batch.filter(pl.col("unusable").is_null()).drop("unusable")
            if batch.height:
                batch.write_parquet(Path(parts_dir) / f"part-{n_parts:06d}.parquet", compression="lz4")
                n_parts += 1
        check_input(records_in, counts["malformed_json"], malformed_lines, params.max_malformed_fraction)
        if not n_parts:
            raise CleanError(f"clean: no record of {paths.RAW} is usable ({dict(counts)}); check the input file")

        # 2. De-duplicate on the key columns only, so the whole table is never in memory at once.
        parts = pl.scan_parquet(f"{parts_dir}/*.parquet")
        keys = decide_duplicates(parts.select(KEY_COLUMNS).collect(engine="streaming"))
        dropped = keys.filter(pl.col("reason").is_not_null()).sort("line")
        write_rejects(rejects, counts, dropped.select("line", "reason", "id", raw=pl.lit(None)).to_dicts())
        kept = keys.filter(pl.col("reason").is_null())
        if kept.is_empty():
            raise CleanError(f"clean: no paper of {paths.RAW} survived the filters ({dict(counts)}); check the clean.* params")

        # 3. Append the kept rows part by part, in input order: memory stays at one part's size
        #    (polars' sink_parquet over all parts peaked at 2x the parse loop's memory).
        kept_lines = kept["line"].implode()
        with atomic_path(paths.PAPERS) as papers_path, ParquetAppender(papers_path) as papers:
            for part in sorted(Path(parts_dir).glob("part-*.parquet")):
                papers.write(pl.read_parquet(part).filter(pl.col("line").is_in(kept_lines)).select(PAPER_COLUMNS))

    rejected = {reason: counts.get(reason, 0) for reason in REASONS}
    metrics = {
        "records_in": records_in,
        "records_out": kept.height,
        "rejected_total": sum(rejected.values()),
        "rejected": rejected,
        "primary_categories": kept["primary_category"].n_unique(),
        "archives": dict(kept["archive"].value_counts(sort=True).iter_rows()),
    }
    if records_in != kept.height + metrics["rejected_total"]:
        raise RuntimeError(f"clean lost track of records: {metrics}")
    write_json(paths.metrics_file("clean"), metrics)
    print(f"clean: {records_in} records in, {kept.height} out, {metrics['rejected_total']} rejected -> {paths.REJECTS}")
    for reason, count in rejected.items():
        if count:
            print(f"  {reason}: {count}")


def write_rejects(out: TextIO, counts: Counter[str], rows: list[dict]) -> None:
    for row in rows:
        counts[row["reason"]] += 1
        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def check_input(records_in: int, malformed: int, first_lines: list[int], max_fraction: float) -> None:
    if records_in == 0:
        raise CleanError(f"clean: {paths.RAW} holds no records (empty file); re-run download or check download.path")
    if malformed / records_in > max_fraction:
        raise CleanError(
            f"clean: {malformed} of {records_in} lines of {paths.RAW} are not valid JSON records "
            f"({malformed / records_in:.2%} > clean.max_malformed_fraction={max_fraction}; first at lines "
            f"{', '.join(map(str, first_lines))}). It looks like the wrong file: check download.path, or raise the param."
        )


if __name__ == "__main__":
    main()
