"""encoding: texts/s of the default model on CPU, the share of evaluate spent encoding, and one
faster CPU path (`load_model(..., backend="int8")`: dynamic int8 Linear layers, per-channel weights) with its retrieval quality.

Quality is NDCG@10 on real papers, plain torch vs int8, for two retrievals: title -> its own
abstract, and abstract -> abstracts of the same primary category.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import runpy
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Report, benchmark_sample, load_note, measure, shared_or
from tests.harness import dvc, make_project, stage_env
from tests.conftest import KAGGLE_SAMPLE

# The 1,000 records of 2007 from ../shared/data when there, else the tests' first 500 of them.
SAMPLE_2007 = shared_or("arxiv-sample.jsonl.gz", KAGGLE_SAMPLE)

QUICK = {"texts": 96, "papers": 200, "share": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", type=int, default=512, help="encoding: abstracts timed per backend")
    parser.add_argument("--papers", type=int, default=1000, help="encoding: papers per sample for the NDCG@10 check (0: skip it)")
    parser.add_argument("--no-share", dest="share", action="store_false", help="encoding: skip the evaluate run (share of wall time spent encoding)")


def read_papers(path: Path, n: int, seed: int = 0) -> list[dict]:
    """`n` seeded-random papers with a title, an abstract and a primary category, whitespace-normalised."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    papers = [
        {"title": " ".join(r["title"].split()), "abstract": " ".join(r["abstract"].split()), "label": r["categories"].split()[0]}
        for r in records
        if r.get("title") and r.get("abstract") and r.get("categories")
    ]
    pick = np.random.default_rng(seed).permutation(len(papers))[:n]
    return [papers[i] for i in sorted(pick)]


def ndcg_at_10(model, papers: list[dict], batch_size: int) -> dict[str, float]:
    """Title -> own abstract, and abstract -> other abstracts of the same category, by cosine."""
    from sklearn.metrics import ndcg_score

    from arxiv_embed.models import encode

    titles = encode(model, [p["title"] for p in papers], batch_size, progress=False)
    abstracts = encode(model, [p["abstract"] for p in papers], batch_size, progress=False)
    labels = np.array([p["label"] for p in papers])
    title_scores = titles @ abstracts.T
    same_label = (labels[:, None] == labels[None, :]).astype(float)
    np.fill_diagonal(same_label, 0.0)  # a paper does not retrieve itself
    category_scores = abstracts @ abstracts.T
    np.fill_diagonal(category_scores, -2.0)
    has_peer = same_label.sum(axis=1) > 0
    return {
        "title_to_abstract": float(ndcg_score(np.eye(len(papers)), title_scores, k=10)),
        "category_retrieval": float(ndcg_score(same_label[has_peer], category_scores[has_peer], k=10)),
    }


def texts_per_second(model, texts: list[str], repeats: int = 3) -> float:
    """Through the stages' CPU path (embed_base, evaluate and the search build: encode_fixed_shapes), the best of
    `repeats` timed passes (as timeit does): other work on a shared CPU only slows a pass down."""
    from arxiv_embed.embeddings import encode_fixed_shapes

    encode_fixed_shapes(model, texts[:64])  # warm-up: first batches allocate
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode_fixed_shapes(model, texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def evaluate_share(workdir: Path, sample: Path) -> dict:
    """Run `stages.evaluate --model base` on `sample` (default params) under the probe."""
    project = make_project(workdir / "project", {"download": {"source": "file", "path": str(sample), "max_records": None}})
    dvc(project, "repro", "embed_base")  # evaluate reads embed_base's vectors: it should encode nothing
    result = measure([sys.executable, "-m", "benchmarks.encoding", "--model", "base"], project,
                     env={**stage_env(project), "PYTHONPATH": str(ROOT)})
    # The process's own wall time too: its start-up and `import sentence_transformers` (~6 s) are the stage's as well.
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "process_wall_s": result.seconds}


def probe(stage_args: list[str]) -> None:
    """Run stages.evaluate in this process with SentenceTransformer.encode timed and its texts counted."""
    from sentence_transformers import SentenceTransformer

    start = time.perf_counter()
    original, seen, spent, depth = SentenceTransformer.encode, Counter(), [0.0], [0]

    def timed_encode(self, inputs, *args, **kwargs):
        depth[0] += 1
        begin = time.perf_counter()
        try:
            return original(self, inputs, *args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:  # encode_query/encode_document call encode: count the outermost call only
                spent[0] += time.perf_counter() - begin
                seen.update((id(self), text) for text in ([inputs] if isinstance(inputs, str) else inputs))

    SentenceTransformer.encode = timed_encode
    sys.argv = ["stages.evaluate", *stage_args]
    runpy.run_module("stages.evaluate", run_name="__main__")
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "encode_s": spent[0], "texts_encoded": sum(seen.values()),
                      "texts_encoded_twice": sum(c - 1 for c in seen.values() if c > 1)}))


def run(args: argparse.Namespace) -> Report:
    from arxiv_embed.models import load_model, quantize_int8
    from arxiv_embed.params import load_params

    params = load_params(ROOT / "params.yaml")
    batch_size, max_len = params.evaluate.batch_size, params.model.max_seq_length
    report = Report("encoding")
    model = load_model(params.model.base, max_seq_length=max_len, device="cpu")
    int8 = quantize_int8(model)
    sample = benchmark_sample(getattr(args, "sample", None))
    report.notes.append(f"recent data: {sample}; 2007 data: {SAMPLE_2007}")
    texts = [p["abstract"] for p in read_papers(sample, args.texts, seed=1)]
    torch_rate, int8_rate = texts_per_second(model, texts), texts_per_second(int8, texts)
    report.add(f"abstracts/s, {max_len} tokens, the stages' CPU path: int8 vs torch", round(int8_rate, 1), round(torch_rate, 1),
               note=f"{len(texts)} recent abstracts, best of 3 passes, {os.cpu_count()} CPU threads")
    for name, path in (("2007", SAMPLE_2007), ("recent", sample)) if args.papers else ():
        papers = read_papers(path, args.papers)
        base, quant = ndcg_at_10(model, papers, batch_size), ndcg_at_10(int8, papers, batch_size)
        for task in base:
            report.add(f"{name} sample ({len(papers)}): {task} NDCG@10, int8 vs torch", round(quant[task], 4), round(base[task], 4),
                       note="adopt if ratio >= 0.99")
    if args.share:
        with tempfile.TemporaryDirectory(prefix="bench-encoding-") as workdir:
            share = evaluate_share(Path(workdir), sample)
        report.add("evaluate --model base: wall time (s)", round(share["process_wall_s"], 1),
                   note=f"{sample.name}, default params; the process's, start-up and imports included")
        report.add("evaluate --model base: share spent encoding", round(share["encode_s"] / share["process_wall_s"], 3))
        report.add("evaluate --model base: texts encoded / encoded twice", f"{share['texts_encoded']} / {share['texts_encoded_twice']}",
                   note="target: 0 twice")
    if note := load_note():
        report.notes.append(note)
    return report


if __name__ == "__main__":  # the probe, run by evaluate_share in a project directory
    probe(sys.argv[1:])
