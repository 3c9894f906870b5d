"""clean: raw arXiv JSON lines -> one Parquet table of usable, de-duplicated papers.

Streams the input in batches of lines (bounded memory on the 4.6 GB snapshot), parses each batch
with polars against an explicit schema, and writes Parquet parts; de-duplication then reads the
key columns (line, id, dates, text hashes) back one hash bucket at a time, and a pass over the parts
appends the kept rows in input order. Every record that is not kept goes to the rejects file, in input
order, with its line number and reason.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import time
from collections import Counter
from operator import itemgetter
from pathlib import Path
from typing import TextIO

import polars as pl

from arxiv_embed import paths
from arxiv_embed.files import ParquetAppender, atomic_path, scratch_dir, write_json
from arxiv_embed.schema.base import load
from arxiv_embed.schema.clean import Clean, CleanParams
from arxiv_embed.progress import Progress
from arxiv_embed.data.columns import PAPER_COLUMNS
from arxiv_embed.data.records import REASONS, UNREADABLE, line_batches, parse_batch, tidy, with_raw
from arxiv_embed.data.dedup import decide_duplicates
from arxiv_embed.errors import START_OVER, UserError, run


FAILED_REJECTS = Path(".dvc/tmp/clean-rejects")  # in the project root: a failed temporary run's rejects (git- and DVC-ignored)


class CleanError(UserError):
    """The input cannot be cleaned (empty, truncated, or the wrong file). The rejects file is still written: it
    says, record by record, why."""


def main() -> None:
    try:
        clean(load(CleanParams).clean)
    except CleanError as error:
        raise rejects_kept_in_the_project(error) from None


def rejects_kept_in_the_project(error: CleanError) -> CleanError:
    """`error`, naming a copy of the rejects file in the project, when the run cleaned in a `dvc exp run --temp` or
    queued run's copy (DVC deletes it, with the file that says what is wrong with the input, once the stage fails)."""
    root = paths.project_root()
    if root == Path.cwd().resolve() or str(paths.REJECTS) not in str(error) or not paths.REJECTS.is_file():
        return error
    kept = root / FAILED_REJECTS / f"{os.environ.get('DVC_EXP_NAME') or time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.REJECTS, kept)
    return CleanError(str(error).replace(str(paths.REJECTS), str(kept)))


def clean(params: Clean) -> None:
    counts: Counter[str] = Counter()
    first_lines: dict[str, int] = {}  # reason -> the first line rejected for it (the error messages name them)
    unreadable: Counter[str] = Counter()  # papers kept whose date is given but unreadable (the date null)
    malformed_lines: list[int] = []
    records_in = n_parts = 0
    paths.CLEAN_DIR.mkdir(parents=True, exist_ok=True)
    with (
        scratch_dir(paths.CLEAN_DIR / "parts") as parts_dir,
        atomic_path(paths.REJECTS, kept_on=(CleanError,)) as rejects_path,
    ):
        # 1. Parse batch by batch; unusable records are rejected here, with their raw line.
        meter = Progress("clean: read", unit="records")
        with rejects_path.open("w", encoding="utf-8") as rejects:
            for first_line, chunk in line_batches(paths.RAW):
                batch, refused = parse_batch(chunk, first_line)  # malformed_json and wrong_type lines
                records_in += batch.height + len(refused)
                meter.update(batch.height + len(refused))
                malformed_lines += [row["line"] for row in refused if row["reason"] == "malformed_json"][: 5 - len(malformed_lines)]
                batch = tidy(batch, params.min_abstract_words, params.max_abstract_words)
                unusable = batch.filter(pl.col("unusable").is_not_null()).select("line", reason="unusable", id="id").to_dicts()
                unusable = with_raw(unusable, chunk, first_line)
                write_rejects(rejects, counts, first_lines, sorted(refused + unusable, key=itemgetter("line")))
                batch = batch.filter(pl.col("unusable").is_null()).drop("unusable")
                if batch.height:
                    batch.write_parquet(Path(parts_dir) / f"part-{n_parts:06d}.parquet", compression="lz4")
                    n_parts += 1
        meter.done()
        check_input(records_in, counts["malformed_json"], malformed_lines, params.max_malformed_fraction)
        if not n_parts:
            raise CleanError(f"no record of {paths.RAW} is usable ({described(counts, first_lines)}); check the input file")

        # 2. De-duplicate, bucket by bucket; only the lines of the records not kept are held.
        parts = pl.scan_parquet(f"{parts_dir}/*.parquet")
        dropped = decide_duplicates(parts)
        merge_in_line_order(rejects_path, dropped, Path(parts_dir) / "rejects-read.jsonl", counts, first_lines)
        dropped_lines = dropped["line"].implode()

        # 3. Append the kept rows part by part, in input order: memory stays at one part's size
        #    (polars' sink_parquet over all parts peaked at 2x the parse loop's memory).
        records_out, archives, primary_categories = 0, Counter(), set()
        with atomic_path(paths.PAPERS) as papers_path, ParquetAppender(papers_path) as papers:
            for part in sorted(Path(parts_dir).glob("part-*.parquet")):
                kept = pl.read_parquet(part).filter(~pl.col("line").is_in(dropped_lines))
                unreadable.update(dict(zip(UNREADABLE, kept.select(pl.col(UNREADABLE).sum()).row(0))))  # papers kept, no more
                kept = kept.select(PAPER_COLUMNS)
                papers.write(kept)
                records_out += kept.height
                archives.update(dict(kept["archive"].value_counts().iter_rows()))
                primary_categories.update(kept["primary_category"].unique())
            if not records_out:
                raise CleanError(f"no paper of {paths.RAW} survived the filters ({described(counts, first_lines)}); check the clean.* params")

    rejected = {reason: counts.get(reason, 0) for reason in REASONS}
    metrics = {
        "records_in": records_in,
        "records_out": records_out,
        "rejected_total": sum(rejected.values()),
        "rejected": rejected,
        "unreadable_dates": {column.removeprefix("unreadable_"): unreadable[column] for column in UNREADABLE},
        "primary_categories": len(primary_categories),
        "archives": dict(sorted(archives.items(), key=lambda item: (-item[1], item[0]))),  # ties by name: same bytes every run
    }
    if records_in != records_out + metrics["rejected_total"]:
        raise RuntimeError(f"clean lost track of records: {metrics}")
    write_json(paths.metrics_file("clean"), metrics)
    # DVC warns that an empty output is empty: say first that it is meant to be.
    empty = " (empty: every record was usable; DVC's warning that it is empty is expected)" if not metrics["rejected_total"] else ""
    print(f"clean: {records_in} records in, {records_out} out, {metrics['rejected_total']} rejected -> {paths.REJECTS}{empty}")
    for reason, count in rejected.items():
        if count:
            print(f"  {reason}: {count}")
    for field_name, count in metrics["unreadable_dates"].items():
        if count:
            print(f"  unreadable {field_name} dates: {count} (kept, without that date)")


def write_rejects(out: TextIO, counts: Counter[str], first_lines: dict[str, int], rows: list[dict]) -> None:
    for row in rows:
        counts[row["reason"]] += 1
        first_lines[row["reason"]] = min(first_lines.get(row["reason"], row["line"]), row["line"])
        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def merge_in_line_order(rejects_path: Path, dropped: pl.DataFrame, aside: Path, counts: Counter[str],
                        first_lines: dict[str, int]) -> None:
    """Merge the records de-duplication drops (sorted by line) into the rejects file the read wrote (sorted by line), so
    the file is in input order; a stream merge: only the dropped lines are held, as they already are."""
    if not dropped.height:
        return
    for reason, count, first in dropped.group_by("reason").agg(pl.len(), pl.col("line").min()).iter_rows():
        counts[reason] += count
        first_lines[reason] = min(first_lines.get(reason, first), first)
    shutil.move(rejects_path, aside)
    slices = dropped.select("line", "reason", "id", raw=pl.lit(None)).iter_slices(65536)  # not 2.7M dicts at once
    duplicates = (row for rows in slices for row in rows.to_dicts())
    with aside.open(encoding="utf-8") as read_rejects, rejects_path.open("w", encoding="utf-8") as out:
        for row in heapq.merge(map(json.loads, read_rejects), duplicates, key=itemgetter("line")):
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def described(counts: Counter[str], first_lines: dict[str, int]) -> str:
    """Each reason's count and first line, pointing at the rejects file for the rest."""
    reasons = "; ".join(f"{reason}: {count}, first at line {first_lines[reason]}" for reason, count in counts.most_common())
    return f"{reasons}; every rejected record, its line and raw text: {paths.REJECTS}"


def check_input(records_in: int, malformed: int, first_lines: list[int], max_fraction: float) -> None:
    if records_in == 0:
        raise CleanError(f"{paths.RAW} holds no records (empty file); re-run download or check download.path")
    if malformed / records_in > max_fraction:
        raise CleanError(
            f"{malformed} of {records_in} lines of {paths.RAW} are not valid JSON records "
            f"({malformed / records_in:.2%} > clean.max_malformed_fraction={max_fraction}; first at line{'s' if len(first_lines) > 1 else ''} "
            f"{', '.join(map(str, first_lines))}; each one's raw text: {paths.REJECTS}). It looks like the wrong file: check "
            "download.path, or raise the param."
        )


if __name__ == "__main__":
    run(main, "clean", START_OVER)
