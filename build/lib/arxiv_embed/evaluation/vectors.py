"""Exact cosine top-k search for the ranking lenses: FAISS IndexFlatIP, never an all-pairs score matrix.

FAISS scores the queries against the corpus in blocks and keeps a k-heap per query, so memory is
Q x k whatever the corpus size. On small data this equals ranking every pair (tests/test_scale.py). Equal scores
go to the lower corpus index, the order InformationRetrievalEvaluator uses when corpus ids sort like
their positions (within the k returned: a tie across the k-th place is as FAISS leaves it).
"""

from __future__ import annotations

import numpy as np


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def search(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Top-k corpus rows per query by cosine similarity (Q x k), best first. exclude_self: query i
    is corpus row i and is never retrieved for itself."""
    import faiss

    queries, corpus = normalise(queries), normalise(corpus)
    k = min(k, len(corpus) - exclude_self)
    if k <= 0 or not len(queries):
        return np.empty((len(queries), max(k, 0)), dtype=np.int64)
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    scores, ranked = index.search(queries, k + exclude_self)
    order = np.lexsort((ranked, -scores), axis=1)  # by score, then by index: FAISS leaves ties unordered
    ranked = np.take_along_axis(ranked, order, axis=1).astype(np.int64)
    if not exclude_self:
        return ranked
    own = ranked == np.arange(len(queries))[:, None]
    # Each row drops its own column, or its last one when a tie pushed itself out of the k + 1.
    own[~own.any(1), -1] = True
    return ranked[~own].reshape(len(queries), k)
