"""binary_search (the 1-bit path shared by the service and the evaluate stage) against a plain numpy
reference, and the FAISS category filter. No model: small seeded vectors."""

from __future__ import annotations

import numpy as np
import pytest

from arxiv_embed.search.engine import binary_search, fit_rotation, make_index, quantize, rescore, search_index


def reference(queries: np.ndarray, corpus: np.ndarray, k: int, multiplier: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hamming distance over the signs after the corpus's ITQ rotation (ties: lower row first), then
    float cosine over those candidates."""
    rotation = fit_rotation(corpus)
    distances = (np.sign(queries @ rotation)[:, None, :] != np.sign(corpus @ rotation)[None, :, :]).sum(-1).astype(float)
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    candidates = np.argsort(distances, axis=1, kind="stable")[:, : k * multiplier]
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    scores = np.take_along_axis(queries @ unit.T, candidates, axis=1)
    return candidates[:, :k], np.take_along_axis(candidates, np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1)


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    """200 vectors in 10 clusters: neighbourhoods exist, so the rescoring has something to fix."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((10, 64))
    vectors = centres[rng.integers(0, 10, 200)] + 0.6 * rng.standard_normal((200, 64))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_binary_search_matches_the_reference(clustered, exclude_self):
    queries = clustered[:50] if exclude_self else clustered[:50] + 0.05
    hamming, rescored = binary_search(queries, clustered, k=10, rescore_multiplier=4, exclude_self=exclude_self)
    assert hamming.shape == rescored.shape == (50, 10) and hamming.dtype == rescored.dtype == np.int64
    want_hamming, want_rescored = reference(queries, clustered, 10, 4, exclude_self)
    # Equal Hamming distances may come back in another order: compare the distances, then the sets.
    rotation = fit_rotation(clustered)
    bits = np.unpackbits(quantize(clustered @ rotation), axis=1)
    query_bits = np.unpackbits(quantize(queries @ rotation), axis=1)
    distance = lambda ranked: (bits[ranked] != query_bits[:, None, :]).sum(-1)  # noqa: E731
    assert (distance(hamming) == distance(want_hamming)).all()
    assert (np.diff(distance(hamming), axis=1) >= 0).all()
    # Rescored lists agree with the reference except where a tie at the candidate cut-off let a different
    # row of equal Hamming distance in; with these vectors that is rare.
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rescored, want_rescored)])
    assert agree > 0.97, agree
    if exclude_self:
        assert not (hamming == np.arange(50)[:, None]).any() and not (rescored == np.arange(50)[:, None]).any()
    else:
        assert (rescored[:, 0] == np.arange(50)).mean() > 0.9  # a nudged copy finds its original first


def test_rescoring_reorders_by_float_cosine_and_beats_hamming(clustered):
    queries = clustered[100:150]
    hamming, rescored = binary_search(queries, clustered, k=10, rescore_multiplier=4, exclude_self=False)
    exact = np.argsort(-(queries @ clustered.T), axis=1, kind="stable")[:, :10]
    recall = lambda ranked: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ranked, exact)])  # noqa: E731
    assert recall(rescored) > recall(hamming) and recall(rescored) > 0.9
    scores = np.take_along_axis(queries @ clustered.T, rescored, axis=1)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_the_itq_rotation_is_orthogonal_and_brings_rows_closer_to_their_signs(clustered):
    rotation = fit_rotation(clustered)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(64), atol=1e-4)
    np.testing.assert_allclose(clustered @ rotation @ (clustered @ rotation).T, clustered @ clustered.T, atol=1e-4)  # cosines kept

    def loss(rotated: np.ndarray) -> float:  # ITQ's objective, scale-free: |sign(v) - v * best scale|
        scale = np.abs(rotated).sum() / (rotated**2).sum()
        return float(((np.sign(rotated) - scale * rotated) ** 2).sum())

    start = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 64)))[0]  # fit_rotation's seeded start
    assert loss(clustered @ rotation) < 0.9 * loss(clustered @ start)
    assert (fit_rotation(clustered) == rotation).all()  # seeded: a rebuild gets the same codes


def test_k_shrinks_to_the_corpus_and_multiplier_one_keeps_the_hamming_set(clustered):
    hamming, rescored = binary_search(clustered[:3], clustered[:5], k=10, rescore_multiplier=4, exclude_self=True)
    assert hamming.shape == rescored.shape == (3, 4)
    hamming, rescored = binary_search(clustered[:20], clustered, k=5, rescore_multiplier=1)
    assert (np.sort(hamming, 1) == np.sort(rescored, 1)).all()


def test_rescore_reads_only_candidate_rows_from_a_memory_map(clustered, tmp_path):
    np.save(tmp_path / "e.npy", clustered)
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    candidates = np.array([[5, 3, 9, 1]])
    ranked = rescore(clustered[3:4], mapped, candidates, 2)
    assert ranked[0, 0] == 3 and ranked.shape == (1, 2)


@pytest.mark.parametrize("precision", ["binary", "float32"])
def test_filter_and_exclusion_keep_rows_out(clustered, precision):
    index = make_index(clustered, precision)
    allowed = np.zeros(len(clustered), dtype=bool)
    allowed[::3] = True
    scores, rows = search_index(index, clustered[:4], 8, allowed=allowed, exclude=np.array([0, 3, 6, 9]))
    assert rows.shape == (4, 8) and (rows % 3 == 0).all()
    assert not (rows == np.array([0, 3, 6, 9])[:, None]).any()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    _, few = search_index(index, clustered[:1], 8, allowed=np.arange(len(clustered)) < 3)
    assert sorted(few[0].tolist()) == [0, 1, 2]  # fewer allowed rows than k: no -1 padding
