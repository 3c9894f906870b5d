"""Stage download: real arXiv metadata -> data/raw/arxiv.jsonl.gz (Kaggle snapshot schema).

Sources (download.source): `oai` harvests arXiv's OAI-PMH interface, `kaggle` reads the Kaggle
snapshot from download.path or streams it from download.kaggle_url, `file` reads any local
JSON-lines file. Lines of local files pass through verbatim: clean validates and counts rejects.
"""

from __future__ import annotations

import gzip
import itertools
import shutil
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from arxiv_embed.files import atomic_path, remove_if_empty, write_json
from arxiv_embed.schema.base import load
from arxiv_embed.schema.download import FETCHED_WITH, DownloadParams, fetched_with
from arxiv_embed.paths import OAI_PAGES, RAW, kept_between_runs, metrics_file
from arxiv_embed.data.http import DownloadError
from arxiv_embed.data.sources import SOURCES, describe_source, oai_pages
from arxiv_embed.errors import run
from arxiv_embed.progress import progress

# The full snapshot is 4.6 GB of text: the fastest level still shrinks it ~4x, and mtime=0 keeps
# the output byte-identical across runs so DVC sees an unchanged file.
COMPRESSLEVEL = 1


def write_raw(lines: Iterator[bytes], path: Path, max_records: int | None, source: str, capped: bool = False) -> int:
    """Write up to max_records lines as gzip JSON lines, atomically; return how many. capped: the lines stop at
    max_records by themselves (an OAI harvest caps set by set, and then says what each set gave)."""
    count = 0
    with closing(lines), atomic_path(path) as tmp, tmp.open("wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=COMPRESSLEVEL, mtime=0, filename="") as out:
            records = progress(lines if capped else itertools.islice(lines, max_records), "download: copied", max_records, "records")
            for count, line in enumerate(records, start=1):
                out.write(line)
        if count == 0:
            raise DownloadError(
                f"{source}: no records (an empty file, or nothing in the harvest window); point download.path at "
                f"the arXiv JSON-lines file or widen download.oai.from_date/until_date"
            )
    return count


def main() -> None:
    params = load(DownloadParams).download
    started = time.monotonic()
    lines, source = SOURCES[params.source].read(params)
    written = write_raw(lines, RAW, params.max_records, source, capped=params.source == "oai")
    # What fetched it: push checks params.yaml's download settings against it before its card names them.
    write_json(metrics_file("download"), {"source": describe_source(params), "records": written, FETCHED_WITH: fetched_with(params)})
    if params.source == "oai":  # written: the saved pages' only use was resuming
        shutil.rmtree(oai_pages(params), ignore_errors=True)  # this harvest's only: another window's may be harvesting (a queued run)
    print(f"download: wrote {written} records from {source} to {RAW} in {time.monotonic() - started:.1f} s")
    tidy_harvest_pages(kept_between_runs(OAI_PAGES))


def tidy_harvest_pages(root: Path) -> None:
    """Remove the pages folder once no harvest has pages there; else name what stopped harvests of other windows, sets
    or oai.py versions left: only their own rerun deletes them (one may be running in a queued experiment), and a
    whole harvest's pages are GBs."""
    if harvests := remove_if_empty(root):
        print(f"download: {root} still holds {len(harvests)} stopped harvest(s) of another window, set list or oai.py "
              f"version ({sum(harvests.values()) / 2**20:,.1f} MB); delete it when no harvest is running, unless you mean to resume one")


if __name__ == "__main__":
    run(main, "download", "a rerun resumes an OAI harvest from its saved pages, and reads a file or URL from its start")
