"""The vector search behind `python -m arxiv_embed.search` and the evaluate stage's 1-bit lens.

Two kinds of index, both FAISS:
- binary (default): RaBitQ (`IndexRaBitQ`, Gao & Long, SIGMOD 2024): 1 bit per dimension (the signs
  of each embedding minus the corpus centroid) plus two floats per vector (56 bytes at 384-d), scanned
  with an asymmetric estimator of the inner product: the query stays (nearly) float, quantised to
  QUERY_BITS bits per dimension, not to signs. The top k * rescore_multiplier candidates by that
  estimate are re-ranked by the float32 cosine with the query. On the 18,505 real papers of the
  multi-domain sample this reaches recall@10 0.989 against exact float search at x8 (0.953 at x4),
  where the earlier ITQ-rotated signs with a Hamming scan (IndexBinaryFlat) reached 0.83-0.87 at x4.
  The codes are ~27x smaller than the floats and are all that is searched in memory; the float rows
  of the few candidates are read from a memory-mapped file.
  From IVF_MIN_ROWS rows on, the binary index is partitioned (`IndexIVFRaBitQ`, "IVF{nlist},RaBitQ2"):
  k-means lists over the embeddings, each vector coded as RaBitQ of its residual to its list's centroid
  with one extra bit per dimension (2 bits: 116 bytes at 384-d, still 13x smaller than the floats); a
  query scans NPROBE of ~sqrt(n) lists, so its cost grows with sqrt(n), not n. A category filter scans
  proportionally more lists (up to MAX_NPROBE), and falls back to an exact float scan of the filtered
  rows when the lists probed still hold too few of them.
- float32: exact inner product (`IndexFlatIP`) over L2-normalised embeddings, i.e. cosine.

`binary_search` is the same path as a pure function over arrays, so the evaluation measures what
users get. benchmarks/search_scale.py compares these at 1M vectors.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np

Precision = Literal["float32", "binary"]
# Candidates rescored per result. x8: recall@10 against exact float search 0.989 on the 18,505 real papers of
# the multi-domain sample (title queries; x4: 0.953, too close to 0.95) and 0.997 on 2.7M real-like vectors
# (x4: 0.962), for no measurable latency (benchmarks/search_scale.py, 2026-12-03): 80 float rows cost well
# under a millisecond.
RESCORE_MULTIPLIER = 8
# Bits per dimension of the query in RaBitQ's estimator (FAISS `qb`). 8, not FAISS's default 4: title queries
# over the 18,505 sample abstracts reach recall@10 0.953 at x4 (4 bits: 0.950) for a ~1.5x slower scan (1M
# vectors: p50 ~40 vs ~27 ms on one loaded core); 0, a float query, scans ~80x slower.
QUERY_BITS = 8
TRAIN_ROWS = 65536  # rows the RaBitQ centroid is computed from (evenly spaced): a memory map is never all read
# Partitioned from here on: a flat 1-bit scan of 100k rows is ~4 ms on one core, and grows linearly past it.
IVF_MIN_ROWS = 100_000
# Lists probed per query: 16 (of 1024 at 1M vectors, 2048 at 2.7M) give recall@10 0.998 / 0.997 after x8
# rescoring on real-like vectors (benchmarks/search_scale.py); each probed list costs a query quantisation
# (~20 us) plus its codes. 32 probes bought no recall: what x4 lost was in the candidates, not the lists.
NPROBE = 16
MAX_NPROBE = 256  # a filter probes proportionally more lists, up to this
# A filter letting at most this many rows through is searched by an exact float scan of those rows (~15 MB of
# memory-mapped rows, a few ms): fewer than the codes the lists holding them would cost, and exact.
EXACT_FILTER_ROWS = 10_000
TRAIN_PER_LIST = 64  # k-means training rows per list (evenly spaced rows of the corpus)


def _faiss():
    import faiss

    # One OpenMP thread per search: a single query split across threads costs more in hand-offs than
    # it saves (4 ms vs 0.6 ms for 100k rows on 2 busy cores); concurrent requests use the cores instead.
    # Per call, because the setting belongs to the calling thread (the server's worker threads).
    faiss.omp_set_num_threads(1)
    return faiss


def bytes_per_vector(dimension: int, precision: Precision) -> int:
    """What one vector costs in the searched flat index: RaBitQ's code (d/8 bytes of bits + 2 floats) or d floats."""
    return _faiss().IndexRaBitQ(dimension, _faiss().METRIC_INNER_PRODUCT).code_size if precision == "binary" else 4 * dimension


def stored_bytes_per_vector(n: int, dimension: int, precision: Precision) -> int:
    """What one of n vectors costs in the index make_index builds for them (from IVF_MIN_ROWS on, the partitioned one's
    2-bit code and id), without building it."""
    if is_ivf_size(n, precision):
        return index_bytes_per_vector(_faiss().index_factory(dimension, ivf_factory(n), _faiss().METRIC_INNER_PRODUCT))
    return bytes_per_vector(dimension, precision)


def index_bytes_per_vector(index) -> int:
    """What one vector costs in this FAISS index: its code, plus the 8-byte id an inverted list keeps."""
    index = _faiss().downcast_index(index)
    if isinstance(index, _faiss().IndexIVF):
        return index.code_size + 8
    return index.code_size if hasattr(index, "code_size") and index.code_size else 4 * index.d


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest sqrt(n) (1M: 1024, 2.7M: 2048)."""
    return max(1, 2 ** round(np.log2(np.sqrt(max(n, 1)))))


def is_ivf(index) -> bool:
    return isinstance(_faiss().downcast_index(index), _faiss().IndexIVF)


def ivf_factory(n: int) -> str:
    """FAISS's factory string of the partitioned 1-bit index over n vectors: ~sqrt(n) lists, RaBitQ with an extra bit."""
    return f"IVF{ivf_lists(n)},RaBitQ2"


def is_ivf_size(n: int, precision: Precision) -> bool:
    """Whether make_index partitions an index of n vectors."""
    return precision == "binary" and n >= IVF_MIN_ROWS


def make_index(embeddings: np.ndarray, precision: Precision):
    """A FAISS index over `embeddings` (n x d float32, L2-normalised): RaBitQ codes (partitioned from IVF_MIN_ROWS
    rows on), or float inner-product flat."""
    faiss = _faiss()
    dimension = embeddings.shape[1]
    if is_ivf_size(len(embeddings), precision):
        nlist = ivf_lists(len(embeddings))
        index = faiss.index_factory(dimension, ivf_factory(len(embeddings)), faiss.METRIC_INNER_PRODUCT)  # an IndexIVFRaBitQ
        index.nprobe, index.qb = NPROBE, QUERY_BITS  # saved with the index
        step = max(1, len(embeddings) // (TRAIN_PER_LIST * nlist))
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # training and adding use every core (searches set 1 again)
        index.train(np.ascontiguousarray(embeddings[::step], dtype=np.float32))
    elif precision == "binary":
        index = faiss.IndexRaBitQ(dimension, faiss.METRIC_INNER_PRODUCT)
        index.qb = QUERY_BITS  # saved with the index
        if len(embeddings):  # training computes the centroid the signs are taken around
            step = max(1, len(embeddings) // TRAIN_ROWS)
            index.train(np.ascontiguousarray(embeddings[::step], dtype=np.float32))
    else:
        index = faiss.IndexFlatIP(dimension)
    for start in range(0, len(embeddings), 65536):  # in slices: a memory-mapped input is never all in memory
        index.add(np.ascontiguousarray(embeddings[start:start + 65536], dtype=np.float32))
    return index


def _params(index, allowed: np.ndarray | None):
    """FAISS search parameters: only rows where `allowed` is True (None: all rows); for a partitioned index,
    NPROBE lists, more when a filter lets only a fraction of the rows through."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if is_ivf(index):
        params = faiss.IVFRaBitQSearchParameters()
        params.qb = index.qb  # the parameters replace the index's own settings: carry them over
        share = 1.0 if allowed is None else max(int(allowed.sum()), 1) / max(index.ntotal, 1)
        params.nprobe = int(min(index.nlist, max(index.nprobe, min(MAX_NPROBE, np.ceil(index.nprobe / share)))))
    elif allowed is None:
        return None
    else:
        params = faiss.SearchParameters()
    if allowed is not None:
        bitmap = np.packbits(allowed, bitorder="little")  # FAISS reads bit i of byte i // 8, lowest first
        params.sel = faiss.IDSelectorBitmap(bitmap)
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
        vectors = np.asarray(corpus[rows.ravel()], dtype=np.float32).reshape(*rows.shape, corpus.shape[1])  # 0 candidates too
        norms = np.maximum(np.linalg.norm(vectors, axis=2), 1e-12)
        scores = np.einsum("qcd,qd->qc", vectors, queries[start:start + block]) / norms
        ranked.append(np.take_along_axis(rows, np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1))
    return np.concatenate(ranked)


def search_index(index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the top k per query from a FAISS index, best first; `exclude[i]` is never returned.

    Scores are inner products: exact (float32) or RaBitQ's estimate (binary); higher is nearer.
    `allowed`: a boolean mask of the rows that may be returned.
    """
    _faiss()  # one OpenMP thread for this thread's searches
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    asked = min(index.ntotal, k + (exclude is not None))
    if asked <= 0 or k <= 0:
        return np.empty((len(queries), 0), dtype=np.float32), np.empty((len(queries), 0), dtype=np.int64)
    scores, rows = index.search(queries, asked, params=_params(index, allowed))
    columns = _kept_columns(rows, exclude, k)
    return np.take_along_axis(scores, columns, axis=1), np.take_along_axis(rows, columns, axis=1).astype(np.int64)


def scan_rows(query: np.ndarray, corpus: np.ndarray, rows: np.ndarray, n: int, exclude: int | None = None) -> np.ndarray:
    """(1, n) int64: the n of `rows` nearest to one query by exact cosine, best first (corpus: unit rows, may be a
    memory map: only `rows` are read). For a filter too selective for the lists a partitioned index probed."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    rows = np.asarray(rows, dtype=np.int64)
    if exclude is not None:
        rows = rows[rows != exclude]
    scores = np.concatenate([np.empty(0, dtype=np.float32)] + [np.asarray(corpus[rows[start:start + 65536]], dtype=np.float32) @ query
                                                              for start in range(0, len(rows), 65536)])
    return rows[np.argsort(-scores, kind="stable")[:n]][None, :]


def binary_search(queries: np.ndarray, corpus: np.ndarray, k: int, rescore_multiplier: int,
                  exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(estimate_ranked, rescored_ranked) corpus rows per query, best first, each (n_queries, k) int64.

    The shipped 1-bit search as a pure function: a RaBitQ index over the corpus (as a build makes it)
    gives the k * rescore_multiplier nearest rows by its estimated inner product, and those are
    re-ranked by the cosine of the float32 query and the float32 corpus rows. exclude_self: query i is
    corpus row i and is never returned. k shrinks to what the corpus holds.
    """
    exclude = np.arange(len(queries)) if exclude_self else None
    index = make_index(np.asarray(corpus, dtype=np.float32), "binary")
    _, candidates = search_index(index, queries, k * max(rescore_multiplier, 1), exclude=exclude)
    return candidates[:, :k], rescore(queries, corpus, candidates, k)
