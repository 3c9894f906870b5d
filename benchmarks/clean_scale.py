"""clean at snapshot scale: the real clean stage vs the seeds' way (chunked pandas.read_json).

Synthetic snapshots of each size are written gzip'ed as a project's data/raw/arxiv.jsonl.gz,
`python -m stages.clean` runs on them as a subprocess, and the same file goes through pandas
with the same filters. MB/s are of uncompressed JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import warnings
from itertools import islice
from pathlib import Path

from benchmarks.common import ROOT, Report, load_note, measure
from benchmarks.synthetic import load_vocabulary, write_snapshot
from arxiv_embed import paths
from arxiv_embed.data.records import WITHDRAWN
from tests.harness import make_project, stage_env



def pandas_clean(raw: Path, out: Path, min_words: int, max_words: int, chunk_lines: int = 10_000) -> dict:
    """The baseline a user would write: read_json(lines=True) chunk by chunk, same filters as clean."""
    import gzip

    import pandas as pd

    kept, malformed = [], 0
    with gzip.open(raw, "rt", encoding="utf-8") as lines:
        while chunk := list(islice(lines, chunk_lines)):
            try:
                frame = pd.read_json(io.StringIO("".join(chunk)), lines=True, dtype=False)
            except ValueError:  # a malformed line fails the whole chunk: keep the lines that parse
                good = [line for line in chunk if _parses(line)]
                malformed += len(chunk) - len(good)
                frame = pd.read_json(io.StringIO("".join(good)), lines=True, dtype=False)
            for column in ("title", "abstract"):
                frame[column] = frame[column].str.split().str.join(" ")
            n_words = frame["abstract"].str.count(" ") + 1
            comments = frame["comments"].fillna("") if "comments" in frame else pd.Series("", index=frame.index)
            with warnings.catch_warnings():  # clean's pattern has groups; only whether it matches counts here
                warnings.filterwarnings("ignore", "This pattern is interpreted as a regular expression")
                withdrawn = frame["abstract"].str.contains(WITHDRAWN) | comments.str.contains(WITHDRAWN)
            frame = frame[n_words.between(min_words, max_words) & ~withdrawn]
            first_created = frame["versions"].str[0].str["created"]
            frame = frame[["id", "title", "abstract", "authors", "categories", "update_date"]].assign(
                first_version_date=pd.to_datetime(first_created, format="%a, %d %b %Y %H:%M:%S %Z").dt.date,
                categories=frame["categories"].str.split(),
            )
            kept.append(frame)
    papers = pd.concat(kept).drop_duplicates("id", keep="last")  # later lines are later versions
    papers.to_parquet(out)
    return {"papers": len(papers), "malformed": malformed}


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[500, 2000], help="clean_scale: synthetic snapshot sizes (uncompressed MB)")
    parser.add_argument("--pandas-max-mb", type=float, default=600, help="clean_scale: larger files get the pandas MB/s extrapolated from the largest smaller run")
    parser.add_argument("--workdir", type=Path, default=None, help="clean_scale: where to write the synthetic files (deleted afterwards)")


QUICK = {"sizes_mb": [20, 80], "pandas_max_mb": 100}


def run(args: argparse.Namespace) -> Report:
    report = Report("clean_scale")
    workdir = Path(tempfile.mkdtemp(prefix="bench-clean-", dir=args.workdir))
    vocabulary = load_vocabulary()
    peaks: dict[float, float] = {}
    pandas_peaks: dict[float, float] = {}
    pandas_mb_s = None
    try:
        for size in sorted(args.sizes_mb):
            project = make_project(workdir / f"project-{size:g}")
            stats = write_snapshot(project / paths.RAW, size, seed=int(size), vocabulary=vocabulary)
            mb = stats.uncompressed_bytes / 1e6
            ours = measure([sys.executable, "-m", "stages.clean"], project, env=stage_env(project))
            metrics = json.loads((project / paths.metrics_file("clean")).read_text())
            label = f"{mb:,.0f} MB"
            report.notes.append(
                f"{label}: {stats.records:,} records ({stats.malformed} malformed lines, {stats.duplicates} duplicate ids, "
                f"{stats.withdrawn} withdrawn, {stats.short} short); metrics/clean.json: {json.dumps(metrics)}"
            )
            if mb <= args.pandas_max_mb:
                baseline = measure(
                    [sys.executable, "-m", "benchmarks.clean_scale", str(project / paths.RAW), str(workdir / "pandas.parquet")],
                    project, env={**stage_env(project), "PYTHONPATH": str(ROOT)},
                )
                pandas_mb_s, pandas_s, pandas_rss = mb / baseline.seconds, baseline.seconds, baseline.peak_rss_mb
                pandas_peaks[size] = pandas_rss
                report.notes.append(f"{label}: pandas kept {baseline.stdout.strip()}")
            else:
                pandas_s, pandas_rss = (mb / pandas_mb_s if pandas_mb_s else None), None
                report.notes.append(f"{label}: pandas not run (> --pandas-max-mb); its time is extrapolated from its MB/s on the smaller file")
            peaks[size] = ours.peak_rss_mb
            report.add(f"{label}: wall time (s)", round(ours.seconds, 1), round(pandas_s, 1) if pandas_s else None, higher_is_better=False,
                       note="" if mb <= args.pandas_max_mb else "baseline extrapolated")
            report.add(f"{label}: throughput (MB/s)", round(mb / ours.seconds, 1), round(pandas_mb_s, 1) if pandas_mb_s else None, note="target >= 10x")
            report.add(f"{label}: peak RSS (MB)", round(ours.peak_rss_mb), round(pandas_rss) if pandas_rss else None, higher_is_better=False)
            shutil.rmtree(project)
        if len(peaks) > 1:
            small, large = min(peaks), max(peaks)
            pandas_growth = pandas_peaks[large] / pandas_peaks[small] if large in pandas_peaks and small in pandas_peaks else None
            report.add(f"peak RSS growth, {small:g} -> {large:g} MB input (x)", round(peaks[large] / peaks[small], 2),
                       pandas_growth and round(pandas_growth, 2), higher_is_better=False, note="target <= 1.2x, and < 2,048 MB")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if note := load_note():
        report.notes.append(note)
    return report


if __name__ == "__main__":  # the baseline, run as its own process so that its peak RSS is its own
    from arxiv_embed.params import load_params

    clean = load_params().clean  # the project's params.yaml (cwd), as the stage reads it
    print(json.dumps(pandas_clean(Path(sys.argv[1]), Path(sys.argv[2]), clean.min_abstract_words, clean.max_abstract_words)))
