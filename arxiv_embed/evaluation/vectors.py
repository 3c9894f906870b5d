"""Embeddings computed once per model and run, and exact cosine search over them.

Rankings break score ties by the lower corpus index, which is the order
InformationRetrievalEvaluator uses when corpus ids sort like their positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from arxiv_embed.models import encode

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BLOCK_ELEMENTS = 1 << 24  # query rows are scored in blocks of about this many cells (64 MiB of float32)


class Embeddings:
    """Vectors of distinct texts, looked up by text: each text is encoded once however many lenses use it."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.index = {text: row for row, text in enumerate(texts)}
        self.vectors = vectors

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        return self.vectors[[self.index[text] for text in texts]]


def embed_texts(model: SentenceTransformer, texts: list[str], batch_size: int, progress: bool = True) -> Embeddings:
    return Embeddings(texts, encode(model, texts, batch_size=batch_size, progress=progress))


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, best first; equal scores go to the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def blocks(n_rows: int, cells_per_row: int) -> Iterator[slice]:
    step = max(1, BLOCK_ELEMENTS // max(cells_per_row, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def drop_self(block: np.ndarray, rows: slice, worst: float | int) -> np.ndarray:
    """Queries are corpus rows `rows`: give each its own column the worst score so it is never retrieved."""
    positions = np.arange(rows.stop - rows.start)
    block[positions, positions + rows.start] = worst
    return block


def search(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Top-k corpus rows per query by cosine similarity (Q x k). exclude_self: query i is corpus row i."""
    queries, corpus = normalise(queries), normalise(corpus)
    k = min(k, len(corpus) - exclude_self)
    ranked = [np.empty((0, k), dtype=np.int64)]
    for rows in blocks(len(queries), len(corpus)):
        scores = queries[rows] @ corpus.T
        ranked.append(top_k(drop_self(scores, rows, -np.inf) if exclude_self else scores, k))
    return np.concatenate(ranked)

