"""The dev files' base-model vectors for benchmarks/objectives.py, encoded once and cached.

Each dev file's seeded PAPERS-record subsample (quality.subsample) runs the real DAG up to
make_triplets in a throw-away project under benchmarks/results/objectives/<file>/ (gitignored); then
every distinct title and abstract of its splits is encoded by the base model, chunk by chunk (saved
as .npy, so an interrupted run resumes), in the order the research needs them: the eval split's
texts, some train texts, the test split's, then the rest of the train texts. Encoding is the
expensive part (tens of minutes on 2 shared cores); everything else in objectives.py takes seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tests.harness import dvc, make_project
from benchmarks.common import RESULTS_DIR, SHARED_DATA

if TYPE_CHECKING:
    from arxiv_embed.embeddings import TextVectors

DEV_FILES = [SHARED_DATA / "arxiv-multidomain-sample.jsonl.gz", SHARED_DATA / "arxiv-recent-sample.jsonl.gz"]
WORK = RESULTS_DIR / "objectives"
# Papers per dev file: 8000 (5.6k train, 0.8k eval, 1.6k test) keeps the encoding to ~32k texts, about
# 30-60 min on 2 cores shared with other work; the learning curve stops at the train split's size.
PAPERS = 8000
CHUNK = 1024  # texts per encoding chunk: each chunk is saved, so an interrupted encoding resumes


def workdir(source: Path) -> Path:
    return WORK / source.name.split(".")[0]


def prepare(source: Path) -> Path:
    """The project of the file's seeded PAPERS-record subsample (quality.subsample), run up to make_triplets (once)."""
    from benchmarks.quality import subsample

    project = workdir(source) / "project"
    if not (project / "dvc.yaml").exists():
        workdir(source).mkdir(parents=True, exist_ok=True)
        sample = subsample(source, PAPERS, workdir(source) / "sample.jsonl.gz")
        make_project(project, {"download": {"source": "file", "path": str(sample), "max_records": None}})
    # download, clean, split, make_triplets: make_triplets also writes the train sample
    # (data/triplets/train_papers.parquet) the labels kind, mining and the classifier read. embed_base is
    # not run: the texts are encoded here, in the research's order (encode_files).
    dvc(project, "repro", "make_triplets")
    return project


def split_texts(project: Path, seed: int = 42) -> list[str]:
    """Every distinct text the lenses and the adapter read, in an order that is useful at any prefix:
    the eval and test papers and triplets first, then each train paper's abstract and title in a
    seeded random paper order (an encoding cut short still covers a random train subset)."""
    import polars as pl

    read = lambda name, columns: pl.read_parquet(project / "data" / name, columns=columns)  # noqa: E731
    held_out = []
    for split in ("eval", "test"):
        papers = read(f"split/{split}.parquet", ["abstract", "title"])
        triplets = read(f"triplets/{split}_triplets.parquet", ["anchor", "positive", "negative"])
        held_out += [papers["abstract"], papers["title"], *(triplets[c] for c in triplets.columns)]
    train = read("split/train.parquet", ["abstract", "title"]).sample(fraction=1.0, shuffle=True, seed=seed)
    interleaved = pl.Series([text for pair in zip(train["abstract"], train["title"]) for text in pair])
    return pl.concat([pl.concat(held_out), interleaved]).unique(maintain_order=True).to_list()


def encode_chunk(source: Path, texts: list[str], i: int, model) -> bool:
    """Encode chunk i of the file's texts unless it is cached; False when past the end."""
    from arxiv_embed.models import encode

    if i * CHUNK >= len(texts):
        return False
    chunk = workdir(source) / "chunks" / f"{i:05d}.npy"
    if not chunk.exists():
        chunk.parent.mkdir(parents=True, exist_ok=True)
        tmp = chunk.with_name(f"tmp-{chunk.name}")
        np.save(tmp, encode(model, texts[i * CHUNK:(i + 1) * CHUNK], progress=False))
        tmp.rename(chunk)
    return True


def encode_files(files: list[Path], train_first: int) -> None:
    """Chunks in the order the research needs them, each file in turn: the eval split's texts (for
    choosing), `train_first` chunks of train texts, the test split's, then the rest of the train
    texts; progress lines; cached chunks are skipped (an interrupted run resumes)."""
    from arxiv_embed.models import load_model
    from tests.harness import params_with

    params = params_with()
    model = load_model(params.model.base, max_seq_length=params.model.max_seq_length, device="cpu")
    texts = {source: split_texts(prepare(source), params.shared.seed) for source in files}
    for source, items in texts.items():
        (workdir(source) / "texts.json").write_text(json.dumps(items))
    bounds = {source: [-(-n // CHUNK) for n in (held_out_count(source, ("eval",)), held_out_count(source), len(texts[source]))]
              for source in files}
    phases = [lambda b: range(0, b[0]), lambda b: range(b[1], min(b[1] + train_first, b[2])),
              lambda b: range(b[0], b[1]), lambda b: range(b[1] + train_first, b[2])]
    total = sum(len(t) for t in texts.values())
    started, last = time.monotonic(), 0.0
    for phase in phases:
        queues = {source: list(phase(bounds[source])) for source in files}
        while any(queues.values()):
            for source in files:
                if queues[source]:
                    encode_chunk(source, texts[source], queues[source].pop(0), model)
            if (elapsed := time.monotonic() - started) - last >= 20:
                last = elapsed
                done = sum(len(list((workdir(s) / "chunks").glob("0*.npy"))) for s in files) * CHUNK
                print(f"objectives: encoded ~{min(done, total)}/{total} texts ({elapsed:.0f} s)", flush=True)


def held_out_count(source: Path, splits: tuple[str, ...] = ("eval", "test")) -> int:
    """Distinct texts of these held-out splits' papers and triplets: split_texts puts them first."""
    import polars as pl

    project = workdir(source) / "project"
    columns = []
    for split in splits:
        papers = pl.read_parquet(project / f"data/split/{split}.parquet", columns=["abstract", "title"])
        triplets = pl.read_parquet(project / f"data/triplets/{split}_triplets.parquet", columns=["anchor", "positive", "negative"])
        columns += [papers["abstract"], papers["title"], *(triplets[c] for c in triplets.columns)]
    return pl.concat(columns).n_unique()


def cached_vectors(source: Path) -> TextVectors:
    """The base-model vectors of the chunks encoded so far (split_texts' order, gaps skipped), looked
    up by text as the stages read embed_base's (arxiv_embed/embeddings.py)."""
    from arxiv_embed.embeddings import TextVectors

    texts = json.loads((workdir(source) / "texts.json").read_text())
    chunks = sorted((workdir(source) / "chunks").glob("0*.npy"))
    if not chunks:
        raise SystemExit(f"objectives: {source.name}: nothing encoded yet: run --objectives-prepare")
    rows = [int(path.stem) for path in chunks]
    return TextVectors([t for i in rows for t in texts[i * CHUNK:(i + 1) * CHUNK]], np.concatenate([np.load(path) for path in chunks]))
