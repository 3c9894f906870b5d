"""search_rebuild: what `python -m arxiv_embed.search build` costs over an index of arXiv's size with real text.

search_scale times the index on synthetic vectors that carry no text; here every row is a real paper (the
multi-domain sample's, or the repository's sample without ../shared, repeated under new ids up to --rebuild-papers,
~1.2 GB of abstracts per million), so the
build's handling of the papers table is what is measured. The stored vectors are random unit vectors written
beside them (nothing here reads their quality), so no paper of the big file is encoded. Two builds, each the
CLI in a child process (wall time; peak RSS from wait4, page cache of the memory-mapped files included):
- the same file again: every paper kept, nothing encoded;
- a 300-paper file (100 new papers, 100 changed abstracts, 100 new titles): the month's update, where every other
  stored paper is kept from the old index's own rows; 200 abstracts are encoded;
- a retrained release (`--new-model`, no papers file): an MLP adapter on the same base model, the shape
  finetune.mode=adapter saves. The stored vectors are recorded as the base model's encoder's, so every paper goes
  through the new adapter and the FAISS index is made anew, with nothing encoded (re-encoding 2.7M abstracts would
  take ~17 h on 2 cores).
At 2.7M it needs ~21 GB free under benchmarks/results/ (the vectors, the index and its rebuilt copy), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, ROOT, Report, load_note, measure
from benchmarks.search_scale import MODEL, SAMPLE

QUICK = {"rebuild_papers": 100_000}
UPDATE = 100  # papers of each kind in the update file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rebuild-papers", type=int, default=2_700_000,
                        help="search_rebuild: papers of real text in the index rebuilt (default: the snapshot's 2.7M)")


def write_inputs(folder: Path, n: int) -> tuple[Path, Path, Path, Path, float]:
    """papers.parquet (n papers), update.parquet (300), the index of the n papers, a retrained adapter model; GB of
    abstracts."""
    import polars as pl
    import torch

    from arxiv_embed.embeddings import encoder_identity
    from arxiv_embed.models import load_model
    from arxiv_embed.search.index import model_identity, read_papers, stored_model, write_index
    from arxiv_embed.training.adapter import attach, identity_adapter

    if not SAMPLE.is_file():
        raise SystemExit(f"search_rebuild: needs real papers: {SAMPLE} is missing (the team's shared data; any "
                         "Kaggle-schema sample of several thousand papers works there)")
    sample = read_papers(SAMPLE)
    papers = pl.concat([sample.with_columns(pl.col("id") + f"-{copy}") for copy in range(-(-n // sample.height))]).head(n)
    papers.drop("text_sha256").write_parquet(folder / "papers.parquet")
    # A new id alone would be no new text: the build copies a stored paper's vectors for an abstract it holds.
    update = pl.concat([papers.slice(0, UPDATE).with_columns(pl.col("id") + "-new", pl.col("abstract") + " A new paper."),
                        papers.slice(n // 3, UPDATE).with_columns(pl.col("abstract") + " Revised."),
                        papers.slice(2 * n // 3, UPDATE).with_columns(pl.col("title") + " (revised)")])
    update.drop("text_sha256").write_parquet(folder / "update.parquet")
    vectors = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, 384))
    rng = np.random.default_rng(0)
    for start in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - start), 384), dtype=np.float32)
        vectors[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    base = load_model(MODEL, device="cpu")  # as the CLI loads it: the encoder the stored vectors are recorded as
    write_index(folder / "index", papers, vectors, "binary", stored_model(MODEL), model_identity(MODEL),
                encoder_sha256=encoder_identity(base, "torch"))
    adapter = identity_adapter(384, "mlp", 384)
    with torch.no_grad():
        for parameter in adapter[1].parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    attach(base, adapter).save(str(folder / "retrained"))
    return (folder / "papers.parquet", folder / "update.parquet", folder / "index", folder / "retrained",
            papers["abstract"].str.len_bytes().sum() / 1e9)


def run(args: argparse.Namespace) -> Report:
    n = args.rebuild_papers
    report = Report("search_rebuild")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="search-rebuild-", dir=RESULTS_DIR) as tmp:
        start = time.perf_counter()
        papers, update, index, retrained, abstract_gb = write_inputs(Path(tmp), n)
        print(f"search_rebuild: {n} papers ({abstract_gb:.2f} GB of abstracts) and their index written in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        label = f"{n / 1e6:g}M" if n >= 1e6 else f"{n // 1000}k"
        builds = ((f"the same {label} papers again (all kept)", ["--papers", str(papers), "--model", MODEL]),
                  (f"a {3 * UPDATE}-paper update ({UPDATE} new, {UPDATE} changed abstracts, {UPDATE} new titles)",
                   ["--papers", str(update), "--model", MODEL]),
                  ("a retrained adapter (--new-model: every paper through it, nothing encoded)",
                   ["--model", str(retrained), "--new-model"]))
        for name, flags in builds:
            result = measure([sys.executable, "-m", "arxiv_embed.search", "build", "--index", str(index), *flags], ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
            print(result.stdout.strip().splitlines()[-1], flush=True)
            report.add(f"{label}-paper index, build from {name}: wall time (s)", result.seconds, higher_is_better=False)
            report.add(f"{label}-paper index, build from {name}: peak RSS (MB)", result.peak_rss_mb, higher_is_better=False)
    report.notes.append(f"real text: {SAMPLE.name} repeated under new ids, {abstract_gb:.2f} GB of abstracts; "
                        "stored vectors random (never encoded); peak RSS counts the page cache of the memory-mapped files")
    if note := load_note():
        report.notes.append(note)
    return report
