"""The vector search behind `python -m arxiv_embed.search` and the evaluate stage's 1-bit lens.

Two kinds of index, both FAISS:
- binary (default): 1 bit per dimension (`IndexBinaryFlat`, exact Hamming scan), whose top
  k * rescore_multiplier candidates are re-ranked by the float32 cosine with the query. The bits are
  the signs of the embeddings after a learned rotation (ITQ, `fit_rotation`): an orthogonal map keeps
  every cosine as it was, but puts the variance where one sign bit captures it (recall@10 at x4 on
  1,024 real abstracts: 0.93 -> 0.98; see benchmarks/search_scale.py).
  The bits are 32x smaller than the floats and are all that is searched in memory; the float rows of
  the few candidates are read from a memory-mapped file.
- float32: exact inner product (`IndexFlatIP`) over L2-normalised embeddings, i.e. cosine.

`binary_search` is the same path as a pure function over arrays, so the evaluation measures what
users get. benchmarks/search_scale.py compares these (and HNSW) at 1M vectors.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Precision = Literal["float32", "binary"]
# Candidates rescored per result. x4 reaches recall@10 0.90-0.94 against exact float search on 5k real
# abstracts, x8 0.97-0.99 (benchmarks/search_scale.py); 80 float rows cost well under a millisecond.
RESCORE_MULTIPLIER = 8


def _faiss():
    import faiss

    # One OpenMP thread per search: a single query split across threads costs more in hand-offs than
    # it saves (4 ms vs 0.6 ms for 100k rows on 2 busy cores); concurrent requests use the cores instead.
    # Per call, because the setting belongs to the calling thread (the server's worker threads).
    faiss.omp_set_num_threads(1)
    return faiss


def quantize(embeddings: np.ndarray) -> np.ndarray:
    """1 bit per dimension (positive -> 1), packed 8 to a byte: sentence-transformers' "ubinary"."""
    embeddings = np.asarray(embeddings)
    if embeddings.shape[-1] % 8:
        raise ValueError(f"1-bit search needs a dimension divisible by 8, got {embeddings.shape[-1]}")
    return np.packbits(embeddings > 0, axis=-1)


def fit_rotation(embeddings: np.ndarray, sample: int = 4096, iterations: int = 25, seed: int = 0) -> np.ndarray:
    """ITQ (Gong & Lazebnik, 2011), without centring: an orthogonal R for which sign(x @ R) is as close
    to x @ R as it gets, so 1-bit codes lose less of each embedding. Fitted on a seeded sample of rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(embeddings), min(sample, len(embeddings)), replace=False))
    x = np.asarray(embeddings[rows], dtype=np.float32)
    rotation = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))[0].astype(np.float32)
    for _ in range(iterations):
        # Fix the codes B = sign(xR); the orthogonal R minimising |B - xR| is V U^T for x^T B = V S U^T.
        u, _, vt = np.linalg.svd(np.sign(x @ rotation).T @ x)
        rotation = (u @ vt).T
    return rotation.astype(np.float32)


def make_index(embeddings: np.ndarray, precision: Precision, rotation: np.ndarray | None = None):
    """A FAISS index over `embeddings` (n x d float32): 1-bit flat over sign(x @ rotation), or float inner-product flat."""
    faiss = _faiss()
    dimension = embeddings.shape[1]
    index = faiss.IndexBinaryFlat(dimension) if precision == "binary" else faiss.IndexFlatIP(dimension)
    for start in range(0, len(embeddings), 65536):  # in slices: a memory-mapped input is never all in memory
        part = np.asarray(embeddings[start:start + 65536], dtype=np.float32)
        if precision == "binary":
            index.add(quantize(part if rotation is None else part @ rotation))
        else:
            index.add(np.ascontiguousarray(part))
    return index


def _selector(allowed: np.ndarray | None):
    """FAISS search parameters that only let rows where `allowed` is True through (None: all rows)."""
    if allowed is None:
        return None
    faiss = _faiss()
    bitmap = np.packbits(allowed, bitorder="little")  # FAISS reads bit i of byte i // 8, lowest first
    params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(bitmap))
    params._keep = bitmap  # the selector points into this buffer: keep it alive as long as params
    return params


def _kept_columns(rows: np.ndarray, exclude: np.ndarray | None, n: int) -> np.ndarray:
    """Column positions of the first n usable hits per query: not -1 (FAISS found fewer) and not exclude[i]."""
    usable = rows >= 0
    if exclude is not None:
        usable &= rows != np.asarray(exclude)[:, None]
    n = min(n, int(usable.sum(1).min(initial=n)))
    # A stable sort of "not usable" brings the usable columns to the front in their ranked order.
    return np.argsort(~usable, axis=1, kind="stable")[:, :n]


def rescore(queries: np.ndarray, corpus: np.ndarray, candidates: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Reorder each query's candidate rows by the cosine of float query and float corpus row; keep k.

    `corpus` may be a memory map: only the candidates' rows are read. Ties keep the candidate order.
    """
    queries = np.asarray(queries, dtype=np.float32)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    k = min(k, candidates.shape[1])
    ranked = [np.empty((0, k), dtype=np.int64)]
    for start in range(0, len(candidates), block):
        rows = candidates[start:start + block]
        vectors = np.asarray(corpus[rows.ravel()], dtype=np.float32).reshape(*rows.shape, -1)
        norms = np.maximum(np.linalg.norm(vectors, axis=2), 1e-12)
        scores = np.einsum("qcd,qd->qc", vectors, queries[start:start + block]) / norms
        ranked.append(np.take_along_axis(rows, np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1))
    return np.concatenate(ranked)


def search_index(index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
                 exclude: np.ndarray | None = None, rotation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the top k per query from a FAISS index, best first; `exclude[i]` is never returned.

    Binary indexes rank by Hamming distance; their scores are the negated distances, so that for
    both kinds a higher score is nearer. `allowed`: a boolean mask of the rows that may be returned.
    """
    faiss = _faiss()
    binary = isinstance(index, faiss.IndexBinary)
    queries = np.asarray(queries, dtype=np.float32)
    if binary:
        queries = quantize(queries if rotation is None else queries @ rotation)
    asked = min(index.ntotal, k + (exclude is not None))
    if asked <= 0 or k <= 0:
        return np.empty((len(queries), 0), dtype=np.float32), np.empty((len(queries), 0), dtype=np.int64)
    scores, rows = index.search(queries, asked, params=_selector(allowed))
    columns = _kept_columns(rows, exclude, k)
    scores = np.take_along_axis(scores, columns, axis=1)
    return (-scores.astype(np.float32) if binary else scores), np.take_along_axis(rows, columns, axis=1).astype(np.int64)


def binary_search(queries: np.ndarray, corpus: np.ndarray, k: int, rescore_multiplier: int,
                  exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(hamming_ranked, rescored_ranked) corpus rows per query, best first, each (n_queries, k) int64.

    The shipped 1-bit search as a pure function: the ITQ rotation is fitted on the corpus (as a build
    does), a FAISS `IndexBinaryFlat` over the rotated signs gives the k * rescore_multiplier nearest
    rows by Hamming distance, and those are re-ranked by the cosine of the float32 query and the
    float32 corpus rows. exclude_self: query i is corpus row i and is never returned. k shrinks to
    what the corpus holds.
    """
    exclude = np.arange(len(queries)) if exclude_self else None
    rotation = fit_rotation(corpus)
    index = make_index(np.asarray(corpus, dtype=np.float32), "binary", rotation)
    _, candidates = search_index(index, queries, k * max(rescore_multiplier, 1), exclude=exclude, rotation=rotation)
    return candidates[:, :k], rescore(queries, corpus, candidates, k)
