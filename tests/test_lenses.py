"""The lenses and metric functions of arxiv_embed/evaluation against hand-computed values, and the retrieval
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
from arxiv_embed.errors import UserError
from arxiv_embed.embeddings import TextVectors
from arxiv_embed.evaluation.data import EvalData, balanced_sample
from arxiv_embed.evaluation.lenses import LENSES, LensInput, LensResult, label_pairs, learning_curve_sizes, lens
from arxiv_embed.evaluation.report import (BOOTSTRAP_RESAMPLES, ModelEval, compare, delta, label_pair_resampler, macro_f1,
                                          paired_intervals, report_markdown, statistic)
from arxiv_embed.evaluation.retrieval import MAX_K, RETRIEVAL_METRICS, retrieval_metrics
from arxiv_embed.evaluation.vectors import search
from arxiv_embed.models import encode
from tests.harness import params_with


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
    metrics = retrieval_metrics(ranked, query_keys=np.array([7]), corpus_keys=np.array([3, 7, 5]))
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
    metrics = retrieval_metrics(ranked, np.array(["a", "a", "b", "a"])[[0]], np.array(["a", "a", "b", "a"]), exclude_self=True)
    ideal = 1 + 1 / log2(3)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / log2(4)) / ideal)
    assert metrics["ndcg@1"] == 1.0
    assert metrics["recall@1"] == pytest.approx(0.5)
    assert metrics["map@100"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert metrics["mrr@10"] == 1.0


def test_queries_without_relevant_documents_are_left_out():
    # Query 1's label has no other paper: only query 0 counts, as in InformationRetrievalEvaluator.
    keys = np.array(["a", "b", "a"])
    metrics = retrieval_metrics(np.array([[1, 2], [0, 2]]), keys[:2], keys, exclude_self=True)
    assert metrics["mrr@10"] == pytest.approx(0.5)
    with pytest.raises(UserError, match=r"no query has a relevant document.*raise evaluate.max_test_papers"):
        retrieval_metrics(np.array([[1]]), np.array(["b"]), np.array(["a", "b"]), exclude_self=True)


def test_a_classifier_train_slice_of_one_label_names_the_evaluate_param():
    from arxiv_embed.evaluation.lenses import classify

    with pytest.raises(UserError, match="train papers of at least 2 labels: raise evaluate.max_train_papers"):
        classify(np.eye(2), np.array(["a", "a"]), np.eye(2), 42)


def test_search_ranks_by_cosine_and_breaks_ties_by_lower_index():
    corpus = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 2.0], [1.0, 0.0]])  # rows 1 and 2: same direction
    ranked = search(np.array([[1.0, 0.9]]), corpus, k=10)
    assert ranked.tolist() == [[1, 2, 3, 0]]
    assert search(corpus, corpus, k=10, exclude_self=True)[1].tolist() == [2, 0, 3]


# --- lenses on hand-made embeddings ---------------------------------------------------------------


def lens_input(test: pl.DataFrame, vectors: dict[str, list[float]], train: pl.DataFrame | None = None,
               triplets: pl.DataFrame | None = None, **evaluate: object) -> LensInput:
    """A LensInput whose embeddings are the given vectors (text -> vector)."""
    texts = list(vectors)
    embed = TextVectors(texts, np.array([vectors[text] for text in texts], dtype=np.float32))
    empty_triplets = pl.DataFrame(schema={"anchor": pl.String, "positive": pl.String, "negative": pl.String, "negative_type": pl.String})
    data = EvalData(test, train if train is not None else test.select("abstract", "label").with_columns(rank=0),
                    triplets if triplets is not None else empty_triplets, test.height)
    return LensInput(embed, data, params_with({"evaluate": evaluate}).evaluate, seed=0)


def test_binary_lens_storage_ratio_and_ranges():
    rng = np.random.default_rng(0)
    abstracts = rng.normal(size=(40, 64)).astype(np.float32)
    titles = abstracts + 0.3 * rng.normal(size=abstracts.shape).astype(np.float32)
    test = pl.DataFrame({"title": [f"t{i}" for i in range(40)], "abstract": [f"a{i}" for i in range(40)],
                         "label": np.repeat(np.array(["a", "b", "c", "d"]), 10)})
    vectors = {f"a{i}": abstracts[i] for i in range(40)} | {f"t{i}": titles[i] for i in range(40)}
    result = LENSES["binary"](lens_input(test, vectors, binary_rescore_multiplier=3))
    assert result.metrics["storage_ratio"] == 64 * 4 / (64 // 8 + 8)  # RaBitQ code: the bits + 2 floats
    assert set(result.metrics) == {"title_ndcg@10", "title_rescored_ndcg@10", "category_ndcg@10", "category_rescored_ndcg@10", "storage_ratio"}
    assert result.metrics["title_ndcg@10"] > 0.8  # titles are noisy copies: 1-bit still finds them
    assert result.metrics["title_rescored_ndcg@10"] >= result.metrics["title_ndcg@10"]
    assert len(result.items["title_ndcg@10"]) == 40


def test_triplet_lens_is_a_strict_cosine_comparison_per_negative_kind():
    test = pl.DataFrame({"title": ["t"], "abstract": ["a"], "label": ["x"]})
    triplets = pl.DataFrame({"anchor": ["q", "q", "q", "q"], "positive": ["p1", "p2", "p3", "p1"],
                             "negative": ["n1", "n2", "n3", "n2"], "negative_type": ["random", "hard", "random", "hard"]})
    vectors = {"t": [0, 1], "a": [0, 1], "q": [1, 0], "p1": [2, 0.1], "n1": [0, 1], "p2": [0, 1], "n2": [5, 0],
               "p3": [1, 1], "n3": [2, 2]}  # p3/n3: a tie, which does not count
    result = LENSES["triplet"](lens_input(test, vectors, triplets=triplets))
    assert result.metrics == pytest.approx({"accuracy": 1 / 4, "accuracy_random": 1 / 2, "accuracy_hard": 0.0})
    # hard_negative_fraction 0: every negative random, and the gate params_check allows (accuracy_random) exists.
    only_random = LENSES["triplet"](lens_input(test, vectors, triplets=triplets.filter(pl.col("negative_type") == "random")))
    assert only_random.metrics == pytest.approx({"accuracy": 1 / 2, "accuracy_random": 1 / 2})


def test_the_title_lens_reads_the_query_vectors_of_a_model_that_encodes_queries_apart():
    """finetune.adapter.query_adapter: evaluate passes the titles' query vectors; the lens searches with them."""
    test = pl.DataFrame({"title": ["t0", "t1"], "abstract": ["a0", "a1"], "label": ["x", "y"]})
    x = lens_input(test, {"t0": [0, 1], "t1": [1, 0], "a0": [1, 0], "a1": [0, 1]})  # as documents, each title finds the other abstract
    assert LENSES["title_to_abstract"](x).metrics["mrr@10"] == pytest.approx(0.5)
    queries = TextVectors(["t0", "t1"], np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert LENSES["title_to_abstract"](LensInput(x.embed, x.data, x.settings, 0, queries)).metrics["mrr@10"] == pytest.approx(1.0)


def test_balanced_sample_keeps_small_labels_and_nests_ranks():
    papers = pl.DataFrame({"id": [f"{i:04}" for i in range(12)], "abstract": [f"p{i}" for i in range(12)],
                           "label": ["big"] * 10 + ["small"] * 2})
    sample = balanced_sample(papers, max_papers=6, seed=1)
    assert sample["label"].value_counts().sort("label").rows() == [("big", 4), ("small", 2)]
    assert sorted(sample.filter(pl.col("label") == "big")["rank"]) == [0, 1, 2, 3]
    assert sample.equals(balanced_sample(papers, max_papers=6, seed=1))
    assert sample.equals(balanced_sample(papers.reverse(), max_papers=6, seed=1))  # the rows' order changes nothing
    assert balanced_sample(papers, 8, seed=1).head(6).equals(sample)  # a larger probe adds papers, keeps these
    assert not balanced_sample(papers, 12, seed=1).equals(balanced_sample(papers, 12, seed=2))


def test_learning_curve_sizes_end_with_all_and_say_which_sizes_were_too_large(capsys):
    assert learning_curve_sizes(np.array([0, 1, 2, 3, 4, 0, 1]), [2, 8, 4, 2]) == [2, 4, 5]
    assert "learning_curve_sizes [8]: the train sample's largest label has 5 papers" in capsys.readouterr().out


def test_macro_f1_by_hand_and_without_rare_labels():
    actual, predicted = np.array(["a", "a", "a", "b", "c"]), np.array(["a", "a", "b", "b", "a"])
    f1_a, f1_b = 2 * (2 / 3 * 2 / 3) / (4 / 3), 2 / 3  # a: P=2/3 R=2/3; b: P=1/2 R=1; c: 0
    assert macro_f1(label_pairs(actual, predicted)) == pytest.approx((f1_a + f1_b + 0) / 3)
    # Without label c (too few test papers), its paper still counts as a wrong "a" prediction.
    assert macro_f1(label_pairs(actual, predicted, ignore={"c"})) == pytest.approx((f1_a + f1_b) / 2)


def test_supported_macro_f1_averages_over_supported_test_labels_only():
    """A label the classifier learned but no test paper has (its stratified quota was 0) is not a supported
    label: predicting it must not add an F1 of 0 to the average (sklearn's f1_score with labels= the supported)."""
    from sklearn.metrics import f1_score

    centres = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "z": [0.0, 0.0, 1.0]}
    rng = np.random.default_rng(0)
    train = pl.DataFrame({"abstract": [f"train {label} {i}" for label in centres for i in range(6)],
                          "label": [label for label in centres for _ in range(6)], "rank": list(range(6)) * 3})
    test = pl.DataFrame({"title": [f"t{i}" for i in range(27)], "abstract": [f"a{i}" for i in range(27)],
                         "label": ["a"] * 12 + ["b"] * 12 + ["c"] * 3})
    where = [centres["z"]] + [centres["a"]] * 11 + [centres["b"]] * 12 + [centres["a"]] * 3  # a0 lies among the z papers
    vectors = {text: np.array(centres[label]) + 0.05 * rng.normal(size=3) for text, label in zip(train["abstract"], train["label"])}
    vectors |= {f"a{i}": np.array(at) + 0.05 * rng.normal(size=3) for i, at in enumerate(where)}
    result = LENSES["classification"](lens_input(test, vectors, train, min_label_support=10, learning_curve_sizes=[]))
    predicted = result.tables["predictions"]["predicted"].to_numpy()
    assert predicted[0] == "z" and "z" not in set(test["label"])
    assert result.metrics["supported_labels"] == 2  # a and b; c has 3 test papers
    expected = f1_score(test["label"].to_numpy(), predicted, labels=["a", "b"], average="macro")
    assert result.metrics["macro_f1_supported"] == pytest.approx(expected)
    # A support no label reaches would score both models 0 (a gate that cannot fail): refused, naming the knob.
    with pytest.raises(UserError, match=r"evaluate.min_label_support=13, but no label has that many test papers \(the most: 12\)"):
        LENSES["classification"](lens_input(test, vectors, train, min_label_support=13, learning_curve_sizes=[]))


def test_clustering_finds_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0], [0, 10.0], [-10.0, -10.0]])
    points = np.concatenate([centre + rng.normal(size=(15, 2)) for centre in centres])
    labels = np.repeat(np.array(["x", "y", "z"]), 15)
    test = pl.DataFrame({"title": [f"t{i}" for i in range(45)], "abstract": [f"a{i}" for i in range(45)], "label": labels})
    vectors = {f"a{i}": points[i] for i in range(45)}
    assert LENSES["clustering"](lens_input(test, vectors)).metrics == pytest.approx({"homogeneity": 1.0, "completeness": 1.0, "ari": 1.0, "nmi": 1.0})
    shuffled = lens_input(test.with_columns(label=rng.permutation(labels)), vectors)
    assert LENSES["clustering"](shuffled).metrics["ari"] < 0.2


def test_other_is_no_category_to_retrieve_support_or_cluster():
    """split's `other` merges rare categories with no subject in common: its papers are nobody's same-category answer
    (their own queries, without one, are left out), not a supported label, and not a cluster to find."""
    rng = np.random.default_rng(0)
    centres = {"x": [10.0, 0, 0], "y": [0, 10.0, 0], "other": [0, 0, 10.0]}  # other's papers placed together: the worst case
    labels = np.repeat(np.array(["x", "y", "other"]), 12)
    points = np.array([centres[label] for label in labels]) + rng.normal(size=(36, 3))
    test = pl.DataFrame({"title": [f"t{i}" for i in range(36)], "abstract": [f"a{i}" for i in range(36)], "label": labels})
    vectors = {f"a{i}": points[i] for i in range(36)} | {f"t{i}": points[i] for i in range(36)}
    retrieval = LENSES["category_retrieval"](lens_input(test, vectors))
    assert len(retrieval.items["ndcg@10"]) == 24 and retrieval.metrics["ndcg@10"] == pytest.approx(1.0)  # x and y queries only
    binary = LENSES["binary"](lens_input(test, vectors))
    assert len(binary.items["category_ndcg@10"]) == 24
    assert ev.supported_labels(labels, 10) == {"x", "y"}
    clustering = LENSES["clustering"](lens_input(test, vectors))
    assert len(clustering.items["ari"]) == 24 and clustering.metrics["ari"] == pytest.approx(1.0)
    one_label = test.filter(pl.col("label") != "y")  # x and other: one cluster would score 1.0 for any model
    with pytest.raises(UserError, match="the test papers hold 1 label\\(s\\) besides `other`"):
        LENSES["clustering"](lens_input(one_label, vectors))
    with pytest.raises(UserError, match="one of `other`, the rare labels merged, has none"):
        LENSES["category_retrieval"](lens_input(test.filter(pl.col("label") == "other"), vectors))


# --- the report: delta, paired intervals, a new lens picked up everywhere ---------------------------


def test_delta_keeps_the_nesting():
    base = {"triplet": {"accuracy": 0.5}, "binary": {"storage_ratio": 32.0, "x@10": 0.25}}
    finetuned = {"triplet": {"accuracy": 0.75}, "binary": {"storage_ratio": 32.0, "x@10": 0.5}}
    assert delta(finetuned, base) == {"triplet": {"accuracy": 0.25}, "binary": {"storage_ratio": 0.0, "x@10": 0.25}}


def evaluation(items: dict[str, np.ndarray]) -> ModelEval:
    return ModelEval.of({"lens": LensResult({name: statistic(v, name) for name, v in items.items()}, items)})


def test_paired_intervals_separate_a_real_gain_from_noise():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    gain, noise = base + 0.05, base + rng.normal(0, 0.05, 400)
    intervals = paired_intervals(evaluation({"gain": base, "noise": base}), evaluation({"gain": gain, "noise": noise}), seed=0)
    assert intervals["lens.gain"] == pytest.approx([0.05, 0.05])  # every item moved by 0.05: no spread
    low, high = intervals["lens.noise"]
    assert low < 0 < high and high - low < 0.03  # a zero-mean change: the interval straddles 0
    same = paired_intervals(evaluation({"gain": base}), evaluation({"gain": base}), seed=0)
    assert same["lens.gain"] == [0.0, 0.0]


def test_paired_interval_of_macro_f1_resamples_papers():
    actual = np.array(["a", "b"] * 50)
    right, wrong = label_pairs(actual, actual), label_pairs(actual, np.array(["a", "a"] * 50))
    (low, high), = paired_intervals(evaluation({"f1": wrong}), evaluation({"f1": right}), seed=0).values()
    assert 0.6 < low <= 2 / 3 <= high < 0.75  # macro-F1 1.0 vs 1/3


@pytest.mark.parametrize("name", ["macro_f1", "macro_f1_supported", "weighted_f1", "homogeneity", "completeness", "ari", "nmi"])
def test_every_resample_of_a_label_pair_metric_scores_what_sklearn_scores(name):
    """The intervals score all resamples from their count tables at once: each must equal sklearn on that resample,
    labels left out (-1), one label, one cluster and a resample of one row repeated included."""
    rng = np.random.default_rng(3)
    actual = rng.integers(0, 12, 300)
    guessed = np.where(rng.random(300) < 0.6, actual, rng.integers(0, 15, 300))  # a few labels only ever predicted
    tables = [np.column_stack([actual, guessed]),
              np.column_stack([np.where(actual > 8, -1, actual), np.where(guessed > 8, -1, guessed)]),  # not counted: -1
              np.column_stack([np.zeros(40, dtype=np.int64), rng.integers(0, 3, 40)]),  # one label
              np.column_stack([rng.integers(0, 3, 40), np.zeros(40, dtype=np.int64)])]  # one cluster
    for rows in tables:
        draws = rng.integers(0, len(rows), size=(70, len(rows)))
        draws[0] = 5  # a resample of one row repeated
        expected = [statistic(rows[drawn], f"lens.{name}") for drawn in draws]
        assert label_pair_resampler(rows, f"lens.{name}")(draws) == pytest.approx(expected, abs=1e-12)


def test_intervals_drawn_a_block_at_a_time_are_those_of_one_array_of_draws():
    """paired_intervals draws and scores RESAMPLE_BLOCK resamples at a time (its memory stays ~block x items at any
    evaluate.max_test_papers): the draws, and so the intervals, are those of one (resamples x items) array."""
    rng = np.random.default_rng(2)
    base, tuned = rng.random(300), rng.random(300)
    labels = rng.integers(0, 6, 300)
    base_rows, tuned_rows = (np.column_stack([labels, np.where(rng.random(300) < right, labels, 0)]) for right in (0.5, 0.7))
    draws = np.random.default_rng([7, 300]).integers(0, 300, size=(BOOTSTRAP_RESAMPLES, 300))
    intervals = paired_intervals(evaluation({"mean": base, "f1": base_rows}), evaluation({"mean": tuned, "f1": tuned_rows}), seed=7)
    # Other draws would move the bounds by ~0.01; a row summed in another order, by its last bits.
    assert intervals["lens.mean"] == pytest.approx(np.percentile((tuned[draws] - base[draws]).mean(axis=1), [2.5, 97.5]), abs=1e-12)
    f1_deltas = label_pair_resampler(tuned_rows, "f1")(draws) - label_pair_resampler(base_rows, "f1")(draws)
    assert intervals["lens.f1"] == pytest.approx(np.percentile(f1_deltas, [2.5, 97.5]), abs=1e-12)


def test_a_metric_s_interval_depends_on_its_items_not_on_the_metrics_before_it():
    """Push's gate reads one interval: adding a lens (or a metric) before it must not move its bounds."""
    rng = np.random.default_rng(1)
    base, tuned = rng.random(300), rng.random(300)
    alone = paired_intervals(evaluation({"gated": base}), evaluation({"gated": tuned}), seed=7)["lens.gated"]
    others = {"earlier": rng.random(50), "gated": base}
    after = paired_intervals(evaluation(others), evaluation({"earlier": rng.random(50), "gated": tuned}), seed=7)
    assert after["lens.gated"] == alone


def test_clustering_intervals_are_centred_on_the_observed_delta():
    """A resample repeats papers, which shrinks an entropy score's delta: plain percentiles put the observed delta
    near the interval's top (0.85 of its width here); recentred, it sits in the middle, the resamples' spread kept."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(60), 8)  # 480 papers in 60 labels: a sparse label x cluster table, as at 69 labels

    def clusters(right: float) -> np.ndarray:  # each paper in its label's cluster with probability `right`
        return np.column_stack([labels, np.where(rng.random(len(labels)) < right, labels, rng.integers(0, 60, len(labels)))])

    names = ("homogeneity", "completeness", "nmi")
    base, tuned = clusters(0.5), clusters(0.6)
    intervals = paired_intervals(evaluation({name: base for name in names}), evaluation({name: tuned for name in names}),
                                 seed=0, resamples=200)
    for name in names:
        low, high = intervals[f"lens.{name}"]
        observed = statistic(tuned, name) - statistic(base, name)
        assert 0.4 < (observed - low) / (high - low) < 0.6, name
        assert 0.04 < high - low < 0.12  # the resamples' spread is kept (a 95% interval over 480 papers)


def test_every_delta_of_the_classifier_and_clustering_has_an_interval(real_papers, real_embeddings):
    """Weighted F1 and k-means' scores are resampled over the test papers, as macro-F1 is."""
    from sklearn.metrics import adjusted_rand_score, completeness_score, f1_score, homogeneity_score, normalized_mutual_info_score

    titles, abstracts = real_embeddings
    x = lens_input(real_papers, {**dict(zip(real_papers["title"], titles.tolist())), **dict(zip(real_papers["abstract"], abstracts.tolist()))},
                   min_label_support=5, learning_curve_sizes=[])
    base = ModelEval.of({name: LENSES[name](x) for name in ("classification", "clustering")})
    assert base.metrics["clustering"]["ari"] == pytest.approx(adjusted_rand_score(*base.items["clustering.ari"].T))
    for name, score in (("homogeneity", homogeneity_score), ("completeness", completeness_score), ("nmi", normalized_mutual_info_score)):
        assert base.metrics["clustering"][name] == pytest.approx(score(*base.items[f"clustering.{name}"].T))
    predictions = base.tables["predictions"]
    assert base.metrics["classification"]["weighted_f1"] == pytest.approx(
        f1_score(predictions["actual"], predictions["predicted"], average="weighted", zero_division=0))
    # What its interval resamples: the (actual, predicted) pairs it is scored from, not another metric's items.
    assert base.metrics["classification"]["weighted_f1"] == pytest.approx(
        f1_score(*base.items["classification.weighted_f1"].T, average="weighted", zero_division=0))
    intervals = paired_intervals(base, base, seed=0)
    for name in ("classification.weighted_f1", "clustering.homogeneity", "clustering.completeness", "clustering.ari", "clustering.nmi"):
        assert intervals[name] == [0.0, 0.0]  # a model against itself: every resample's delta is 0


def test_the_storage_ratio_is_the_index_the_search_builds_at_that_size():
    from arxiv_embed.search.engine import IVF_MIN_ROWS, stored_bytes_per_vector

    assert stored_bytes_per_vector(IVF_MIN_ROWS - 1, 384, "binary") == 56  # flat RaBitQ: 48 bytes of bits + 2 floats
    assert stored_bytes_per_vector(IVF_MIN_ROWS, 384, "binary") == 124  # partitioned, 2 bits a dimension + an id
    assert stored_bytes_per_vector(10, 384, "float32") == 1536


def test_the_binary_lens_reports_the_partitioned_index_s_storage_ratio(real_papers, real_embeddings, monkeypatch):
    import arxiv_embed.search.engine as engine

    titles, abstracts = real_embeddings
    x = lens_input(real_papers, {**dict(zip(real_papers["title"], titles.tolist())), **dict(zip(real_papers["abstract"], abstracts.tolist()))})
    assert LENSES["binary"](x).metrics["storage_ratio"] == pytest.approx(4 * 384 / 56)
    monkeypatch.setattr(engine, "IVF_MIN_ROWS", 10)  # these 24 papers as a snapshot-sized test sample
    assert LENSES["binary"](x).metrics["storage_ratio"] == pytest.approx(4 * 384 / 124)


def test_a_new_lens_reaches_the_report_and_the_gate(monkeypatch, tmp_path):
    """Adding a lens is one function: the report, its intervals and the push gate pick it up."""
    from stages.push import check_gate

    monkeypatch.setitem(LENSES, "novelty", None)  # recorded as absent before @lens registers it: removed after this test

    @lens
    def novelty(x: LensInput) -> LensResult:
        return LensResult.of_means({"score@5": np.full(len(x.labels), 0.5 if x.seed else 0.25)})

    test = pl.DataFrame({"title": ["t1", "t2"], "abstract": ["a1", "a2"], "label": ["x", "x"]})
    x = lens_input(test, {"t1": [1, 0], "t2": [0, 1], "a1": [1, 0], "a2": [0, 1]})
    base = ModelEval.of({"novelty": LENSES["novelty"](x)})
    tuned = ModelEval.of({"novelty": LENSES["novelty"](LensInput(x.embed, x.data, x.settings, seed=1))})
    report = compare(base, tuned, seed=0)
    assert report["delta"] == {"novelty": {"score@5": 0.25}} and report["delta_ci95"] == {"novelty.score@5": [0.25, 0.25]}
    assert "| novelty.score@5 | 0.2500 | 0.5000 | +0.2500 | [+0.2500, +0.2500] |" in report_markdown(report, {"test_papers": 2})
    # The new lens is the gated metric, and (here the only) headline metric with its own floor, once its names are
    # in GATEABLE (the params check refuses a name no lens reports).
    from arxiv_embed.schema import push as push_schema

    with pytest.raises(UserError, match="'novelty.score@5' is not a metric evaluate gives an interval"):
        params_with({"push": {"gate": {"metric": "novelty.score@5", "tolerance": 0.0}}})
    monkeypatch.setattr(push_schema, "GATEABLE", push_schema.GATEABLE | {"novelty.score@5"})
    gate = params_with({"push": {"gate": {"metric": "novelty.score@5", "tolerance": 0.0}}}).push.gate
    gate = gate.model_copy(update={"headline_tolerances": {"novelty.score@5": 0.0}})
    assert check_gate(report, gate)["delta_ci95"] == [0.25, 0.25]
    tuned.save(tmp_path / "tuned")
    assert ModelEval.load(tmp_path / "tuned").items["novelty.score@5"].tolist() == [0.5, 0.5]



# --- equivalence with sentence-transformers' evaluator, on real papers ----------------------------


@pytest.fixture(scope="module")
def real_papers(kaggle_sample) -> pl.DataFrame:
    return sample_papers(kaggle_sample, per_label=8, n_labels=3)


@pytest.fixture(scope="module")
def real_embeddings(base_model, real_papers):
    texts = real_papers["abstract"].to_list() + real_papers["title"].to_list()
    embed = TextVectors(texts, encode(base_model, texts, 32, progress=False))
    return embed(real_papers["title"]), embed(real_papers["abstract"])


def ir_evaluator(queries: dict, corpus: dict, relevant: dict):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries, corpus, relevant, mrr_at_k=[1, 10], ndcg_at_k=[1, 10], precision_recall_at_k=[1, 10],
        accuracy_at_k=[1], map_at_k=[100], write_csv=False,
    )


def test_the_title_lens_counts_a_copy_of_the_papers_abstract_as_its_own():
    """A resubmission under a new id (split keeps it beside the original): the copy's abstract, on top for the
    original's title, is a right answer. Copies differ in case and punctuation; another abstract stays wrong."""
    test = pl.DataFrame({"title": ["t0", "t1", "t2"], "abstract": ["Alpha beta.", "Gamma delta", "gamma, DELTA"],
                         "label": ["x", "y", "y"]})
    vectors = {"t0": [1, 0, 0], "t1": [0, 0.5, 1], "t2": [0, 0.3, 1],
               "Alpha beta.": [1, 0, 0], "Gamma delta": [0, 1, 0], "gamma, DELTA": [0, 0.9, 0.436]}
    result = LENSES["title_to_abstract"](lens_input(test, vectors))
    assert result.metrics["mrr@10"] == pytest.approx(1.0) and result.metrics["ndcg@10"] == pytest.approx(1.0)
    # The 1-bit lens's title search reads the same answers (its float rescoring ranks all three abstracts here).
    assert LENSES["binary"](lens_input(test, vectors)).metrics["title_rescored_ndcg@10"] == pytest.approx(1.0)
    vectors["t0"] = [0, 1, 0]  # t0 now finds the copies first: its own abstract comes third
    assert LENSES["title_to_abstract"](lens_input(test, vectors)).metrics["mrr@10"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    # Each title's answer on top, a copy further down behind another paper's abstract: perfect search, every metric 1
    # (a copy is the same answer, not one more to find: recall@1 was 1/2 for a paper with one copy).
    test = pl.DataFrame({"title": ["t0", "t1", "t2"], "abstract": ["Gamma delta", "gamma, DELTA", "Alpha beta"], "label": ["x", "x", "y"]})
    vectors = {"Gamma delta": [1, 0, 0], "gamma, DELTA": [.6, .8, 0], "Alpha beta": [.8, 0, .6], "t0": [1, 0, 0], "t1": [.6, .8, 0],
               "t2": [0, 0, 1]}
    for name in ("title_to_abstract", "binary"):
        metrics = LENSES[name](lens_input(test, vectors)).metrics
        assert all(value == pytest.approx(1.0) for key, value in metrics.items() if "title" in key or name == "title_to_abstract"), metrics


def evaluator_keys(scores: dict) -> dict[str, float]:
    return {name: scores[f"cosine_{name}"] for name in RETRIEVAL_METRICS}


def test_title_to_abstract_matches_information_retrieval_evaluator(base_model, real_papers, real_embeddings):
    titles, abstracts = real_embeddings
    ids = [f"p{i:03d}" for i in range(real_papers.height)]  # ids sort like positions: same tie order
    evaluator = ir_evaluator(
        dict(zip(ids, real_papers["title"])), dict(zip(ids, real_papers["abstract"])), {i: {i} for i in ids}
    )
    papers = np.arange(real_papers.height)
    ours = retrieval_metrics(search(titles, abstracts, MAX_K), papers, papers)
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
    expected = {name: float(np.mean([scores[name] for scores in per_query])) for name in RETRIEVAL_METRICS}
    ours = retrieval_metrics(search(abstracts, abstracts, MAX_K, exclude_self=True), labels, labels, exclude_self=True)
    assert ours == pytest.approx(expected, abs=1e-6)
    assert 0 < ours["ndcg@10"] < 1


def test_evaluate_vectors_runs_every_lens_on_one_lookup_table(base_model, real_papers):
    test = real_papers.filter(pl.int_range(pl.len()).over("label") < 5)
    train = balanced_sample(real_papers.filter(pl.int_range(pl.len()).over("label") >= 5), 100, seed=0)
    triplets = pl.DataFrame(
        {"anchor": test["abstract"][:4], "positive": test["abstract"][1:5], "negative": test["abstract"][5:9],
         "negative_type": ["random", "hard"] * 2}
    )
    data = EvalData(test, train, triplets, test.height)
    texts = data.texts()
    assert len(texts) == len(set(texts)) == 2 * test.height + train.height
    vectors = TextVectors(texts, encode(base_model, texts, 32, progress=False))
    result = ev.evaluate_vectors(vectors, data, params_with({"evaluate": {"learning_curve_sizes": [1, 2], "min_label_support": 5}}).evaluate,
                                 seed=0)
    assert result.tables["learning_curve"]["train_per_label"].to_list() == [1, 2, 3]
    assert {"accuracy", "accuracy_random", "accuracy_hard"} == result.metrics["triplet"].keys()
    assert result.tables["predictions"].height == result.tables["map_2d"].height == test.height
    assert set(result.metrics) == set(LENSES) - {"embedding_map"}  # every lens with metrics reports


def test_a_plotted_lens_declares_its_plots_and_the_stage_draws_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lens with a plot is one decorated function: its Plot reaches the writer's list, per model
    or joined wide (one column per model), as the learning curve is."""
    from arxiv_embed.evaluation import lenses
    from arxiv_embed.evaluation.lenses import PLOTS, Plot

    drawn = []
    plot = Plot("spread", lambda table, path, title: drawn.append((path.name, title, table.columns)), "spread_{model}.png",
                "{model} spread", models=("base", "finetuned"))
    wide = Plot("spread", lambda table, path, title: drawn.append((path.name, title, table.columns)), "spread.png", "both",
                models=("base", "finetuned"), wide="k")

    @lens(plots=(plot, wide))
    def spread(x: LensInput) -> LensResult:
        return LensResult({}, tables={"spread": pl.DataFrame({"k": [1, 2], "value": [0.1, 0.2]})})

    try:
        assert PLOTS[-2:] == [plot, wide] and lenses.LENSES["spread"] is spread
        tables = {model: spread(None).tables for model in ("base", "finetuned")}
        for declared in PLOTS[-2:]:
            for model, table in declared.tables(tables):
                declared.draw(table, tmp_path / declared.png.format(model=model), declared.title.format(model=model))
    finally:
        del PLOTS[-2:]
        lenses.LENSES.pop("spread")
    assert drawn == [("spread_base.png", "base spread", ["k", "value"]), ("spread_finetuned.png", "finetuned spread", ["k", "value"]),
                     ("spread.png", "both", ["k", "base", "finetuned"])]
