"""The metric functions of arxiv_embed/evaluation/lenses.py against hand-computed values, and the retrieval
metrics against sentence-transformers' InformationRetrievalEvaluator on real papers."""

from __future__ import annotations

import gzip
import json
from math import log2
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from arxiv_embed.evaluation import lenses as ev
from arxiv_embed.workspace import params_with


def sample_papers(path: Path, per_label: int, n_labels: int) -> pl.DataFrame:
    """The first `per_label` papers of the `n_labels` largest archives of a real Kaggle-schema sample."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    papers = pl.DataFrame(
        {
            "id": [r["id"] for r in records],
            "title": [" ".join(r["title"].split()) for r in records],
            "abstract": [" ".join(r["abstract"].split()) for r in records],
            "label": [r["categories"].split()[0].split(".")[0] for r in records],
        }
    )
    largest = papers["label"].value_counts().sort(["count", "label"], descending=[True, False])["label"][:n_labels]
    return papers.filter(pl.col("label").is_in(largest.implode())).group_by("label", maintain_order=True).head(per_label)


# --- retrieval metrics, by hand -----------------------------------------------------------------


def test_mrr_when_the_answer_is_at_rank_2():
    ranked = np.array([[0, 1, 2]])  # corpus rows, best first
    metrics = ev.retrieval_metrics(ranked, query_keys=np.array([7]), corpus_keys=np.array([3, 7, 5]))
    assert metrics["mrr@1"] == 0.0
    assert metrics["mrr@10"] == pytest.approx(0.5)
    assert metrics["recall@1"] == 0.0
    assert metrics["recall@10"] == 1.0
    assert metrics["ndcg@1"] == 0.0
    assert metrics["ndcg@10"] == pytest.approx(1 / log2(3))
    assert metrics["map@100"] == pytest.approx(0.5)


def test_ndcg_and_map_with_two_relevant_documents():
    # Relevant documents (label "a") at ranks 1 and 3; a third "a" is the query itself, excluded.
    ranked = np.array([[1, 2, 3]])
    metrics = ev.retrieval_metrics(ranked, np.array(["a", "a", "b", "a"])[[0]], np.array(["a", "a", "b", "a"]), exclude_self=True)
    ideal = 1 + 1 / log2(3)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / log2(4)) / ideal)
    assert metrics["ndcg@1"] == 1.0
    assert metrics["recall@1"] == pytest.approx(0.5)
    assert metrics["map@100"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert metrics["mrr@10"] == 1.0


def test_queries_without_relevant_documents_are_left_out():
    # Query 1's label has no other paper: only query 0 counts, as in InformationRetrievalEvaluator.
    keys = np.array(["a", "b", "a"])
    metrics = ev.retrieval_metrics(np.array([[1, 2], [0, 2]]), keys[:2], keys, exclude_self=True)
    assert metrics["mrr@10"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query has a relevant document"):
        ev.retrieval_metrics(np.array([[1]]), np.array(["b"]), np.array(["a", "b"]), exclude_self=True)


def test_search_ranks_by_cosine_and_breaks_ties_by_lower_index():
    corpus = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 2.0], [1.0, 0.0]])  # rows 1 and 2: same direction
    ranked = ev.search(np.array([[1.0, 0.9]]), corpus, k=10)
    assert ranked.tolist() == [[1, 2, 3, 0]]
    assert ev.search(corpus, corpus, k=10, exclude_self=True)[1].tolist() == [2, 0, 3]


# --- 1-bit search ---------------------------------------------------------------------------------


def test_quantize_binary_packs_one_bit_per_dimension():
    bits = ev.quantize_binary(np.array([[0.5, -0.1, 0.2, 0.0, -1, 1, 1, 1, 0.3]]))
    assert bits.dtype == np.uint8
    assert bits.tolist() == [[0b10100111, 0b10000000]]


def test_hamming_search_ties_go_to_the_lower_index_and_self_is_excluded():
    corpus = np.array([[0b1111_0000], [0b1111_0011], [0b1111_1100], [0b0000_0000], [0b1111_0001]], dtype=np.uint8)
    query = corpus[[0]]
    # Distances from row 0: 0, 2, 2, 4, 1 -> rows 1 and 2 tie at 2, so row 1 comes first.
    assert ev.hamming_search(query, corpus, k=5).tolist() == [[0, 4, 1, 2, 3]]
    assert ev.hamming_search(corpus, corpus, k=10, exclude_self=True)[0].tolist() == [4, 1, 2, 3]
    assert ev.hamming_search(corpus, corpus, k=10, exclude_self=True)[2].tolist() == [0, 4, 1, 3]


def test_rescore_reorders_candidates_by_float_query_dot_bits():
    corpus_bits = ev.quantize_binary(np.array([[1, -1, -1, 1], [1, 1, -1, -1], [-1, 1, 1, 1.0]]))
    query = np.array([[0.25, 0.5, 0.0, 0.25]])
    # query . bits: row 0 -> 0.5, row 1 -> 0.75, row 2 -> 0.75 (a tie: keeps the candidate order 2, 1)
    assert ev.rescore(query, corpus_bits, np.array([[0, 2, 1]]), k=2).tolist() == [[2, 1]]


def test_binary_metrics_storage_ratio_and_ranges():
    rng = np.random.default_rng(0)
    abstracts = rng.normal(size=(40, 64)).astype(np.float32)
    titles = abstracts + 0.3 * rng.normal(size=abstracts.shape).astype(np.float32)
    labels = np.repeat(np.array(["a", "b", "c", "d"]), 10)
    metrics = ev.binary_metrics(titles, abstracts, labels, multiplier=3)
    assert metrics["storage_ratio"] == 32
    assert set(metrics) == {
        "title_to_abstract_ndcg@10", "title_to_abstract_ndcg@10_rescored",
        "category_retrieval_ndcg@10", "category_retrieval_ndcg@10_rescored", "storage_ratio",
    }
    assert metrics["title_to_abstract_ndcg@10"] > 0.8  # titles are noisy copies: 1-bit still finds them
    assert metrics["title_to_abstract_ndcg@10_rescored"] >= metrics["title_to_abstract_ndcg@10"] - 0.05


# --- triplets, classification, clustering ---------------------------------------------------------


def test_triplet_accuracy_is_strict_cosine_comparison():
    anchors = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    positives = np.array([[2.0, 0.1], [0.0, 1.0], [1.0, 1.0]])
    negatives = np.array([[0.0, 1.0], [5.0, 0.0], [2.0, 2.0]])  # third: a tie, which does not count
    assert ev.triplet_accuracy(anchors, positives, negatives) == pytest.approx(1 / 3)


def test_balanced_sample_keeps_small_labels_and_nests_ranks():
    papers = pl.DataFrame({"abstract": [f"p{i}" for i in range(12)], "label": ["big"] * 10 + ["small"] * 2})
    sample = ev.balanced_sample(papers, max_papers=6, seed=1)
    assert sample["label"].value_counts().sort("label").rows() == [("big", 4), ("small", 2)]
    assert sorted(sample.filter(pl.col("label") == "big")["rank"]) == [0, 1, 2, 3]
    assert sample.equals(ev.balanced_sample(papers, max_papers=6, seed=1))
    assert not ev.balanced_sample(papers, 12, seed=1).equals(ev.balanced_sample(papers, 12, seed=2))


def test_learning_curve_sizes_end_with_all():
    assert ev.learning_curve_sizes(np.array([0, 1, 2, 3, 4, 0, 1]), [2, 8, 4, 2]) == [2, 4, 5]


def test_classification_metrics_by_hand():
    metrics = ev.classification_metrics(np.array(["a", "a", "a", "b"]), np.array(["a", "a", "b", "b"]))
    assert metrics["accuracy"] == pytest.approx(0.75)
    f1_a, f1_b = 0.8, 2 / 3  # a: P=1 R=2/3; b: P=1/2 R=1
    assert metrics["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert metrics["weighted_f1"] == pytest.approx((3 * f1_a + f1_b) / 4)


def test_clustering_finds_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0], [0, 10.0], [-10.0, -10.0]])
    points = np.concatenate([centre + rng.normal(size=(15, 2)) for centre in centres])
    labels = np.repeat(np.array(["x", "y", "z"]), 15)
    assert ev.clustering_metrics(points, labels, seed=0) == pytest.approx({"v_measure": 1.0, "ari": 1.0, "nmi": 1.0})
    shuffled = rng.permutation(labels)
    assert ev.clustering_metrics(points, shuffled, seed=0)["ari"] < 0.2


def test_delta_and_flatten():
    base = {"triplet_accuracy": 0.5, "binary": {"storage_ratio": 32.0, "x@10": 0.25}}
    finetuned = {"triplet_accuracy": 0.75, "binary": {"storage_ratio": 32.0, "x@10": 0.5}}
    assert ev.delta(finetuned, base) == {"triplet_accuracy": 0.25, "binary": {"storage_ratio": 0.0, "x@10": 0.25}}
    assert ev.flatten_metrics(base) == {"triplet_accuracy": 0.5, "binary.storage_ratio": 32.0, "binary.x@10": 0.25}


# --- equivalence with sentence-transformers' evaluator, on real papers ----------------------------


@pytest.fixture(scope="module")
def real_papers(kaggle_sample) -> pl.DataFrame:
    return sample_papers(kaggle_sample, per_label=8, n_labels=3)


@pytest.fixture(scope="module")
def real_embeddings(base_model, real_papers):
    embed = ev.embed_texts(base_model, real_papers["abstract"].to_list() + real_papers["title"].to_list(), 32, progress=False)
    return embed(real_papers["title"]), embed(real_papers["abstract"])


def ir_evaluator(queries: dict, corpus: dict, relevant: dict):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries, corpus, relevant, mrr_at_k=[1, 10], ndcg_at_k=[1, 10], precision_recall_at_k=[1, 10],
        accuracy_at_k=[1], map_at_k=[100], write_csv=False,
    )


def evaluator_keys(scores: dict) -> dict[str, float]:
    return {name: scores[f"cosine_{name}"] for name in ev.RETRIEVAL_METRICS}


def test_title_to_abstract_matches_information_retrieval_evaluator(base_model, real_papers, real_embeddings):
    titles, abstracts = real_embeddings
    ids = [f"p{i:03d}" for i in range(real_papers.height)]  # ids sort like positions: same tie order
    evaluator = ir_evaluator(
        dict(zip(ids, real_papers["title"])), dict(zip(ids, real_papers["abstract"])), {i: {i} for i in ids}
    )
    papers = np.arange(real_papers.height)
    ours = ev.retrieval_metrics(ev.search(titles, abstracts, ev.MAX_K), papers, papers)
    assert ours == pytest.approx(evaluator_keys(evaluator(base_model)), abs=1e-6)
    assert 0 < ours["mrr@10"] < 1  # not a trivial case: some titles miss their abstract at rank 1


class Precomputed:
    """The model as the evaluator sees it, answering with embeddings already computed (one encode
    call instead of one per query; the evaluator's own encoding is covered by the title test)."""

    similarity_fn_name = "cosine"

    def __init__(self, model, texts: list[str], embeddings: np.ndarray) -> None:
        self.similarity, self.model_card_data = model.similarity, model.model_card_data
        self.lookup = dict(zip(texts, embeddings))

    def encode_query(self, sentences: list[str], **kwargs):
        import torch

        return torch.from_numpy(np.stack([self.lookup[text] for text in sentences]))


def test_category_retrieval_matches_information_retrieval_evaluator(base_model, real_papers, real_embeddings):
    """The evaluator cannot drop the query from the corpus, so each query gets its own evaluator
    over the other papers; their mean is the whole set's metric."""
    import torch

    _, abstracts = real_embeddings
    model = Precomputed(base_model, real_papers["abstract"].to_list(), abstracts)
    labels = real_papers["label"].to_numpy()
    ids = [f"p{i:03d}" for i in range(real_papers.height)]
    per_query = []
    for q in range(real_papers.height):
        others = [i for i in range(real_papers.height) if i != q]
        evaluator = ir_evaluator(
            {ids[q]: real_papers["abstract"][q]},
            {ids[i]: real_papers["abstract"][i] for i in others},
            {ids[q]: {ids[i] for i in others if labels[i] == labels[q]}},
        )
        per_query.append(evaluator_keys(evaluator(model, corpus_embeddings=torch.from_numpy(abstracts[others]))))
    expected = {name: float(np.mean([scores[name] for scores in per_query])) for name in ev.RETRIEVAL_METRICS}
    ours = ev.retrieval_metrics(ev.search(abstracts, abstracts, ev.MAX_K, exclude_self=True), labels, labels, exclude_self=True)
    assert ours == pytest.approx(expected, abs=1e-6)
    assert 0 < ours["ndcg@10"] < 1


def test_evaluate_model_encodes_each_text_once(base_model, real_papers, monkeypatch):
    calls = []

    def counting_encode(model, texts, batch_size=64, progress=True):
        calls.append(list(texts))
        return original(model, texts, batch_size=batch_size, progress=False)

    original = ev.encode
    monkeypatch.setattr(ev, "encode", counting_encode)
    test = real_papers.filter(pl.int_range(pl.len()).over("label") < 5)
    train = ev.balanced_sample(real_papers.filter(pl.int_range(pl.len()).over("label") >= 5), 100, seed=0)
    triplets = pl.DataFrame(
        {"anchor": test["abstract"][:4], "positive": test["abstract"][1:5], "negative": test["abstract"][5:9],
         "negative_type": ["random", "hard"] * 2}
    )
    result = ev.evaluate_model(base_model, ev.EvalData(test, train, triplets), params_with({"evaluate": {"learning_curve_sizes": [1, 2]}}).evaluate, seed=0)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == 2 * test.height + train.height
    assert result.learning_curve["train_per_label"].to_list() == [1, 2, 3]
    assert {"triplet_accuracy_random", "triplet_accuracy_hard"} <= result.metrics.keys()
    assert result.predictions.height == result.coordinates.height == test.height
