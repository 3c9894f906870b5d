"""reuse_store: what embed_base's kept vectors (data/embeddings/reuse, embed_base.reuse_max_texts) cost at their cap.

A store holding `--reuse-store-texts` abstract-length texts (the default cap), and a run of `--reuse-run-texts`
of which half are in the store: the time and peak memory of reading the store for that run (embed_texts_reusing,
all its texts found: nothing to encode) and of keeping the run's vectors with the store's others up to the cap
(keep_for_reuse). The baseline keeps this run's only (`reuse_max_texts: 0`: hard links). Texts are the sample's real
abstracts, each made distinct by a number; vectors are random (384 float32, MiniLM's width).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Report, load_note, measure, shared_or

SAMPLE = shared_or("arxiv-multidomain-sample.jsonl.gz", ROOT / "data" / "sample" / "arxiv-sample.jsonl.gz")
QUICK = {"reuse_store_texts": 20_000, "reuse_run_texts": 4_000}
KEY = "benchmark-key"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reuse-store-texts", type=int, default=500_000, help="reuse_store: texts the store holds (the cap)")
    parser.add_argument("--reuse-run-texts", type=int, default=100_000, help="reuse_store: texts of the run (half of them in the store)")


def write_vectors(folder: Path, texts: list[str], seed: int) -> None:
    from arxiv_embed.embeddings import TextVectors

    vectors = np.random.default_rng(seed).standard_normal((len(texts), 384), dtype=np.float32)
    TextVectors(texts, vectors).save(folder, KEY)


def prepare(folder: Path, store_texts: int, run_texts: int) -> None:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as lines:
        abstracts = [" ".join(json.loads(line)["abstract"].split()) for line in lines]
    texts = [f"{abstracts[i % len(abstracts)]} ({i})" for i in range(store_texts + run_texts // 2)]
    write_vectors(folder / "store", texts[:store_texts], 0)
    write_vectors(folder / "run", texts[store_texts - run_texts // 2:], 1)  # half in the store, half new


def child(folder: Path, step: str, max_texts: int) -> None:
    """One step in a process of its own, so its peak RSS is its own."""
    from arxiv_embed.embeddings import TextVectors, embed_texts_reusing, keep_for_reuse

    class Unused:  # every text is in the store: the model is asked its width only
        def get_embedding_dimension(self) -> int:
            return 384

    run = TextVectors.load(folder / "run")
    if step == "read":  # the store read for a run whose texts it all holds: the run's half that the store has
        found = run.texts[: len(run.texts) // 2]
        _, reused, _ = embed_texts_reusing(Unused(), found, folder / "store", folder / "chunks", KEY)
        assert reused == len(found), (reused, len(found))
    else:
        keep_for_reuse(folder / "run", folder / "store", max_texts)


def run(args: argparse.Namespace) -> Report:
    report = Report("reuse_store")
    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
        folder = Path(tmp)
        prepare(folder, args.reuse_store_texts, args.reuse_run_texts)
        size_mb = sum(path.stat().st_size for path in (folder / "store").iterdir()) / 2**20

        def step(name: str, max_texts: int = 0):
            return measure([sys.executable, "-m", "benchmarks.reuse_store", "--child", str(folder), name, str(max_texts)], ROOT)

        read = step("read")
        (folder / "store-copy").mkdir()  # the baseline's keep replaces the store: keep a copy for the capped keep
        for path in (folder / "store").iterdir():
            (folder / "store-copy" / path.name).write_bytes(path.read_bytes())
        links = step("keep", 0)
        (folder / "store").rename(folder / "store-linked")
        (folder / "store-copy").rename(folder / "store")
        capped = step("keep", args.reuse_store_texts)
        from arxiv_embed.embeddings import TextVectors

        stored = len(TextVectors.load(folder / "store"))
    where = f"{args.reuse_store_texts:,} texts kept, a run of {args.reuse_run_texts:,}"
    report.add(f"store on disk at the cap, {args.reuse_store_texts:,} texts (MB)", round(size_mb), None, higher_is_better=False)
    report.add(f"read the store for {args.reuse_run_texts // 2:,} texts it holds (s)", round(read.seconds, 1), None, higher_is_better=False, note=where)
    report.add("read: peak memory (MB)", round(read.peak_rss_mb), None, higher_is_better=False)
    report.add("keep this run's and earlier runs' up to the cap (s)", round(capped.seconds, 1), round(links.seconds, 1), higher_is_better=False,
               note="baseline: this run's only (hard links, reuse_max_texts 0)")
    report.add("keep: peak memory (MB)", round(capped.peak_rss_mb), round(links.peak_rss_mb), higher_is_better=False)
    report.add("texts in the store after the keep", stored, args.reuse_run_texts, note=f"capped at {args.reuse_store_texts:,}")
    if note := load_note():
        report.notes.append(note)
    return report


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
