"""Retrieval metrics per query (MRR, NDCG, recall, MAP at cutoffs), computed as
sentence-transformers' InformationRetrievalEvaluator does. Per query, so the report can put a
paired bootstrap interval on each delta; the metric is the mean."""

from __future__ import annotations

import numpy as np

from arxiv_embed.errors import UserError

# The retrieval metrics reported for each retrieval lens: name -> (kind, cutoff).
RETRIEVAL_METRICS = {
    "mrr@1": ("mrr", 1),
    "mrr@10": ("mrr", 10),
    "ndcg@1": ("ndcg", 1),
    "ndcg@10": ("ndcg", 10),
    "recall@1": ("recall", 1),
    "recall@10": ("recall", 10),
    "map@100": ("map", 100),
}
MAX_K = max(k for _, k in RETRIEVAL_METRICS.values())


def _mrr(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    hits = hits[:, :k]
    return np.where(hits.any(1), 1.0 / (hits.argmax(1) + 1), 0.0)


def _ndcg(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits[:, :k] @ discounts[: hits[:, :k].shape[1]]
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    return dcg / ideal


def _recall(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(1) / n_relevant


def _map(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    hits = hits[:, :k]
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    return (precision * hits).sum(1) / np.minimum(k, n_relevant)


_METRIC_FUNCTIONS = {"mrr": _mrr, "ndcg": _ndcg, "recall": _recall, "map": _map}


def per_query(
    ranked: np.ndarray,
    query_keys: np.ndarray,
    corpus_keys: np.ndarray,
    exclude_self: bool = False,
    metrics: dict[str, tuple[str, int]] = RETRIEVAL_METRICS,
    one_answer: bool = False,
) -> dict[str, np.ndarray]:
    """Each metric's value for each answerable query.

    `ranked` holds corpus rows per query, best first (at least the largest cutoff where the corpus
    has that many). A document is relevant to a query when their keys are equal; with exclude_self,
    query i is corpus row i and does not count. Queries without a relevant document are left out,
    as the evaluator leaves them out. one_answer: the documents of a query's key are copies of its one
    right answer (a paper's abstract under several ids): the first one found is the answer, and the
    others neither count as more answers to find nor as hits.
    """
    query_keys, corpus_keys = np.asarray(query_keys), np.asarray(corpus_keys)
    keys, counts = np.unique(corpus_keys, return_counts=True)
    where = np.clip(np.searchsorted(keys, query_keys), 0, len(keys) - 1)
    n_relevant = np.where(keys[where] == query_keys, counts[where], 0) - int(exclude_self)
    answerable = n_relevant > 0
    if not answerable.any():
        raise UserError("no query has a relevant document: every label has a single test paper (one of `other`, the "
                        "rare labels merged, has none) (raise evaluate.max_test_papers, or split.test_fraction)")
    hits = (corpus_keys[ranked] == query_keys[:, None])[answerable].astype(np.float64)
    n_relevant = n_relevant[answerable]
    if one_answer:  # every metric then reads the first copy's rank alone
        first = np.where(hits.any(1), hits.argmax(1), -1)
        hits = (np.arange(hits.shape[1]) == first[:, None]).astype(np.float64)
        n_relevant = np.ones_like(n_relevant)
    return {name: _METRIC_FUNCTIONS[kind](hits, n_relevant, k) for name, (kind, k) in metrics.items()}


def retrieval_metrics(*args: object, **kwargs: object) -> dict[str, float]:
    """The mean over queries of per_query (same arguments): MRR, NDCG, recall and MAP at cutoffs."""
    return {name: float(np.mean(values)) for name, values in per_query(*args, **kwargs).items()}
