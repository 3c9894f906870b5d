"""Synthetic arXiv snapshots in the exact Kaggle schema, at any size, for benchmarks at scale.

Words are drawn from the real 2007 sample's abstracts (so LaTeX like `$\\alpha$` and accents
appear at their real rate), laid out as the snapshot does it: two leading spaces, hard line
breaks, nested `versions` and `authors_parsed`. Every `malformed_every`-th line is a truncated
record and every `duplicate_every`-th record repeats an earlier id (a later version of it).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The 2007 Kaggle block (../shared/data when there, else the tests' first 500 lines of it).
_SHARED_2007 = ROOT.parent / "shared" / "data" / "arxiv-sample.jsonl.gz"
VOCAB_SOURCE = _SHARED_2007 if _SHARED_2007.is_file() else ROOT / "tests" / "fixtures" / "arxiv-2007.jsonl.gz"
CATEGORIES = (
    "cs.CV cs.CL cs.LG cs.AI math.CO math.PR math.AP hep-th hep-ph astro-ph.GA astro-ph.CO "
    "cond-mat.str-el cond-mat.mes-hall quant-ph gr-qc physics.optics q-bio.NC stat.ML nucl-th"
).split()
NAMES = "Smith Chen Garcia Müller Rossi Novák Kowalski Tanaka Kim Dubois Ivanov Silva Nguyen Jensen".split()
FIRST = "A. B. Maria Jean Wei Li José Anna Pierre Olga Sven J.-P. Hiroshi".split()
WITHDRAWN = "  This paper has been withdrawn by the authors due to a crucial error in equation 2.\n"
EPOCH = datetime(2015, 1, 1, tzinfo=timezone.utc)  # new-style ids (YYMM.NNNNN) from here on
PER_MONTH = 20000


@dataclass
class SnapshotStats:
    records: int = 0  # well-formed lines, duplicates included
    malformed: int = 0
    duplicates: int = 0
    withdrawn: int = 0
    short: int = 0  # abstracts under 20 words
    uncompressed_bytes: int = 0


def load_vocabulary(source: Path = VOCAB_SOURCE) -> list[str]:
    """Every word token of the real sample's abstracts, with repeats: sampling from it keeps word frequencies."""
    with gzip.open(source, "rt", encoding="utf-8") as lines:
        return [word for line in lines for word in json.loads(line)["abstract"].split()]


def _abstract(words: list[str]) -> str:
    # The snapshot wraps abstracts at ~80 characters with hard breaks and indents them by two spaces.
    lines = (" ".join(words[i : i + 11]) for i in range(0, len(words), 11))
    return "  " + "\n".join(lines) + "\n"


def _record(n: int, rng: np.random.Generator, vocab: np.ndarray, stats: SnapshotStats) -> dict:
    kind = rng.random()
    if kind < 0.003:
        abstract = WITHDRAWN
        stats.withdrawn += 1
    else:
        n_words = int(rng.integers(5, 19)) if kind < 0.008 else int(rng.integers(100, 251))
        stats.short += n_words < 20
        abstract = _abstract(vocab[rng.integers(0, len(vocab), n_words)].tolist())
    title_words = vocab[rng.integers(0, len(vocab), int(rng.integers(5, 16)))].tolist()
    title = " ".join(title_words[:6]) + ("\n  " if n % 3 == 0 else " ") + " ".join(title_words[6:])
    n_authors = int(rng.integers(1, 6))
    authors = [(NAMES[int(i)], FIRST[int(j)]) for i, j in zip(rng.integers(0, len(NAMES), n_authors), rng.integers(0, len(FIRST), n_authors))]
    month, seq = divmod(n, PER_MONTH)
    created = EPOCH.replace(year=EPOCH.year + month // 12, month=month % 12 + 1) + timedelta(minutes=2 * seq)
    versions = [
        {"version": f"v{v + 1}", "created": format_datetime(created + timedelta(days=40 * v), usegmt=True)}
        for v in range(int(rng.integers(1, 4)))
    ]
    cats = rng.choice(len(CATEGORIES), int(rng.integers(1, 4)), replace=False)
    return {
        "id": f"{created:%y%m}.{seq + 1:05d}",
        "submitter": " ".join(authors[0][::-1]),
        "authors": ", ".join(f"{first} {last}" for last, first in authors),
        "title": title.strip(),
        "comments": f"{int(rng.integers(4, 40))} pages, {int(rng.integers(0, 9))} figures" if kind > 0.3 else None,
        "journal-ref": None,
        "doi": f"10.1103/PhysRevD.{n}" if kind > 0.7 else None,
        "report-no": None,
        "categories": " ".join(CATEGORIES[int(c)] for c in cats),
        "license": "http://arxiv.org/licenses/nonexclusive-distrib/1.0/" if kind > 0.5 else None,
        "abstract": abstract,
        "versions": versions,
        "update_date": (created + timedelta(days=400)).date().isoformat(),
        "authors_parsed": [[last, first, ""] for last, first in authors],
    }


def write_snapshot(
    path: Path,
    target_mb: float,
    seed: int = 0,
    malformed_every: int = 5000,
    duplicate_every: int = 1000,
    vocabulary: list[str] | None = None,
) -> SnapshotStats:
    """Write gzip'ed (level 1: the benchmark measures cleaning, not compression) JSON lines until
    `target_mb` uncompressed megabytes; return what was written."""
    rng = np.random.default_rng(seed)
    vocab = np.asarray(vocabulary or load_vocabulary(), dtype=object)
    stats = SnapshotStats()
    target = int(target_mb * 1e6)
    recent: list[dict] = []  # candidates to duplicate
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as out:
        n = 0
        while stats.uncompressed_bytes < target:
            n += 1
            if n % malformed_every == 0:  # a record cut off mid-way, as a broken download leaves it
                line = json.dumps(_record(n, rng, vocab, SnapshotStats()), ensure_ascii=False)
                line = line[: len(line) // 2]
                stats.malformed += 1
            else:
                if n % duplicate_every == 0 and recent:
                    record = dict(recent[int(rng.integers(0, len(recent)))], update_date="2024-02-13")
                    stats.duplicates += 1
                else:
                    record = _record(n, rng, vocab, stats)
                    if len(recent) < 1000:
                        recent.append(record)
                line = json.dumps(record, ensure_ascii=False)
                stats.records += 1
            data = (line + "\n").encode("utf-8")
            stats.uncompressed_bytes += len(data)
            out.write(data)
    return stats
