"""Build the embedded default data, data/sample/arxiv-sample.jsonl.gz, and the tests' small
Kaggle-schema fixture, tests/fixtures/arxiv-2007.jsonl.gz, from the team's shared samples.

    python data/sample/make_sample.py --shared ../shared/data

Standard library only, deterministic: the same inputs give byte-identical outputs (the sha256 in
data/sample/README.md). Lines are copied verbatim; nothing in a record is changed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCES = ("arxiv-multidomain-sample.jsonl.gz", "arxiv-recent-sample.jsonl.gz")  # 20 archives + recent cs
KAGGLE_2007 = "arxiv-sample.jsonl.gz"  # the first 1,000 lines of Kaggle's snapshot (0704.xxxx)
PER_CATEGORY = 70  # papers drawn per primary category; categories with fewer are left out
FIXTURE_LINES = 500  # the tests' Kaggle-schema fixture: the first 500 of those 1,000 lines
SEED = 0


def read_lines(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as handle:
        return [line if line.endswith(b"\n") else line + b"\n" for line in handle if line.strip()]


def write_gz(path: Path, lines: list[bytes]) -> str:
    """gzip with no name and mtime 0, so the bytes depend on the lines only; returns the sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as out:
        out.writelines(lines)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def draw(lines: list[bytes], per_category: int, seed: int) -> list[bytes]:
    """`per_category` random papers of every primary category that has that many, in random order.

    Equal counts keep every label above split.min_papers_per_label (nothing merged into `other`),
    and the shuffle makes any prefix (download.max_records) a mix of all domains.
    """
    by_category: dict[str, list[bytes]] = defaultdict(list)
    for line in lines:
        by_category[json.loads(line)["categories"].split()[0]].append(line)
    rng = random.Random(seed)
    drawn = [line for category in sorted(by_category) if len(by_category[category]) >= per_category
             for line in rng.sample(by_category[category], per_category)]
    rng.shuffle(drawn)
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding the shared samples (default: ../shared/data beside the project)")
    args = parser.parse_args()
    missing = [name for name in (*SOURCES, KAGGLE_2007) if not (args.shared / name).is_file()]
    if missing:
        raise SystemExit(f"{args.shared}: missing {', '.join(missing)}; pass --shared DIR with the shared samples")

    pool = [line for name in SOURCES for line in read_lines(args.shared / name)]
    sample = draw(pool, PER_CATEGORY, SEED)
    digest = write_gz(HERE / "arxiv-sample.jsonl.gz", sample)
    print(f"data/sample/arxiv-sample.jsonl.gz: {len(sample)} records, sha256 {digest}")
    fixture = read_lines(args.shared / KAGGLE_2007)[:FIXTURE_LINES]
    digest = write_gz(ROOT / "tests" / "fixtures" / "arxiv-2007.jsonl.gz", fixture)
    print(f"tests/fixtures/arxiv-2007.jsonl.gz: {len(fixture)} records, sha256 {digest}")


if __name__ == "__main__":
    main()
