"""The evaluation lenses: each turns one model's embeddings of the held-out papers into named metrics.

A lens is one function registered with `@lens`: it reads a `LensInput` and returns a `LensResult`
with its metrics (reported as `<lens>.<metric>`, e.g. `category_retrieval.ndcg@10`), optionally the
per-item values behind a metric (for paired bootstrap intervals) and tables to save and plot. The
report, MLflow logging, model card and push gate take whatever the lenses return: adding a lens is
adding one function here, and a plotted lens declares its plots in its decorator (`Plot`), which the
evaluate stage draws without another edit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from arxiv_embed import paths
from arxiv_embed.data.columns import OTHER, same_abstract_key
from arxiv_embed.errors import UserError
from arxiv_embed.evaluation.data import EvalData
from arxiv_embed.evaluation.plots import plot_confusion, plot_learning_curve, plot_map
from arxiv_embed.evaluation.report import ModelEval, macro_f1, statistic
from arxiv_embed.evaluation.retrieval import MAX_K, per_query
from arxiv_embed.evaluation.vectors import normalise, search
from arxiv_embed.search.engine import binary_search, stored_bytes_per_vector


if TYPE_CHECKING:
    from arxiv_embed.embeddings import TextVectors
    from arxiv_embed.schema.evaluate import Evaluate

BINARY_K = 10  # the 1-bit lens reports NDCG@10
KMEANS_N_INIT = 10


@dataclass
class LensInput:
    """What every lens reads: one model's embeddings of the held-out data, and the evaluate params."""

    embed: TextVectors
    data: EvalData
    settings: Evaluate
    seed: int
    queries: TextVectors | None = None  # the titles as queries, when the model encodes queries apart (encode_query)

    @cached_property
    def abstracts(self) -> np.ndarray:
        return self.embed(self.data.test["abstract"])

    @cached_property
    def titles(self) -> np.ndarray:
        return (self.embed if self.queries is None else self.queries)(self.data.test["title"])

    @cached_property
    def labels(self) -> np.ndarray:
        return self.data.test["label"].to_numpy()

    @cached_property
    def abstract_keys(self) -> np.ndarray:
        """Each test paper's abstract key (same_abstract_key): a title's right answers are its own abstract and its copies."""
        return self.data.test.select(same_abstract_key(pl.col("abstract"))).to_series().to_numpy()


@dataclass
class LensResult:
    metrics: dict[str, float]
    # metric -> per-item values: 1-D (the metric is their mean) or (n, 2) label ids (actual, predicted)
    items: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)  # saved beside the metrics, plotted

    @classmethod
    def of_means(cls, items: dict[str, np.ndarray]) -> LensResult:
        return cls({name: float(np.mean(values)) for name, values in items.items()}, items)


@dataclass(frozen=True)
class Plot:
    """A table a lens returns, drawn by the evaluate stage (and, with `csv`, written for `dvc plots`).

    models: whose table is drawn, one PNG each (`png` may hold `{model}`), or with `wide` one
    table of all of them: joined on column `wide`, the value column renamed to each model's name."""

    table: str
    draw: Callable[[pl.DataFrame, Path, str], None]  # plots.py: (table, png path, title)
    png: str  # under metrics/plots/
    title: str  # `{model}` is replaced by the model's name
    models: tuple[str, ...] = ("finetuned",)
    wide: str | None = None
    csv: Path | None = None

    def tables(self, by_model: dict[str, dict[str, pl.DataFrame]]) -> list[tuple[str, pl.DataFrame]]:
        """(model, table) to draw from each model's tables: one per model, or one joined wide ("all")."""
        tables = {model: by_model[model][self.table] for model in self.models}
        if self.wide is None:
            return list(tables.items())
        wide = None
        for model, table in tables.items():
            (value,) = [c for c in table.columns if c != self.wide]
            table = table.rename({value: model})
            wide = table if wide is None else wide.join(table, on=self.wide, how="full", coalesce=True)
        return [("all", wide.sort(self.wide))]


LENSES: dict[str, Callable[[LensInput], LensResult]] = {}
PLOTS: list[Plot] = []  # every registered lens's plots, in registration order


def lens(function: Callable[[LensInput], LensResult] | None = None, *, plots: tuple[Plot, ...] = ()) -> Callable:
    """Register `function` as a lens named after it (`@lens`), with the plots of its tables (`@lens(plots=...)`)."""

    def register(function: Callable[[LensInput], LensResult]) -> Callable[[LensInput], LensResult]:
        LENSES[function.__name__] = function
        PLOTS.extend(plots)
        return function

    return register(function) if function is not None else register


def evaluate_vectors(vectors: TextVectors, data: EvalData, settings: Evaluate, seed: int,
                     queries: TextVectors | None = None) -> ModelEval:
    """One model's vectors of data.texts() (each text encoded once: arxiv_embed/embeddings.py) through
    every lens; `queries`: the test titles' query vectors, for a model that encodes queries apart."""
    x = LensInput(vectors, data, settings, seed, queries)
    results = {}
    for name, function in LENSES.items():
        started = time.monotonic()
        results[name] = function(x)
        print(f"evaluate: lens {name} in {time.monotonic() - started:.1f} s", flush=True)  # the slow ones show in the log
    return ModelEval.of(results)


@lens
def triplet(x: LensInput) -> LensResult:
    """Share of test triplets with cos(anchor, positive) > cos(anchor, negative), as TripletEvaluator
    (margin 0); also per negative kind (random, or hard: same archive, other category)."""
    rows = x.data.triplets
    anchors, positives, negatives = (normalise(x.embed(rows[column])) for column in ("anchor", "positive", "negative"))
    correct = ((anchors * positives).sum(1) > (anchors * negatives).sum(1)).astype(np.float64)
    items = {"accuracy": correct}
    kinds = rows["negative_type"].to_numpy()
    # Each kind some triplet has (params_check and push's gate rely on it): all random at hard_negative_fraction 0.
    items |= {f"accuracy_{kind}": correct[kinds == kind] for kind in ("random", "hard") if (kinds == kind).any()}
    return LensResult.of_means(items)


@lens
def title_to_abstract(x: LensInput) -> LensResult:
    """Search by a paper's title: is its own abstract on top? A copy of that abstract under another id (a
    resubmission, which split keeps in the same split) is as right an answer: the first of them found is the answer."""
    return LensResult.of_means(per_query(search(x.titles, x.abstracts, MAX_K), x.abstract_keys, x.abstract_keys, one_answer=True))


@lens
def category_retrieval(x: LensInput) -> LensResult:
    """Search by an abstract: are the nearest other abstracts of the same label? (`other` is no category: see
    category_keys.)"""
    ranked = search(x.abstracts, x.abstracts, MAX_K, exclude_self=True)
    keys = category_keys(x.labels)
    return LensResult.of_means(per_query(ranked, keys, keys, exclude_self=True))


@lens(plots=(
    # Wide (one column per model) so `dvc plots` draws one line per model from one file.
    Plot("learning_curve", plot_learning_curve, "learning_curve.png", "Classification learning curve",
         models=("base", "finetuned"), wide="train_per_label", csv=paths.LEARNING_CURVE),
    Plot("predictions", plot_confusion, "confusion_matrix.png", "Fine-tuned model: test-paper labels (row-normalised)",
         csv=paths.CONFUSION),
))
def classification(x: LensInput) -> LensResult:
    """Logistic regression on frozen embeddings, trained on the balanced train slice, over a
    learning curve of papers per label. macro_f1_supported counts only labels with at least
    evaluate.min_label_support test papers: F1 over 3 papers is mostly noise."""
    train = x.data.train
    train_x, train_y, train_rank = x.embed(train["abstract"]), train["label"].to_numpy(), train["rank"].to_numpy()
    curve = []
    for per_label in learning_curve_sizes(train_rank, x.settings.learning_curve_sizes):
        subset = train_rank < per_label
        predicted = classify(train_x[subset], train_y[subset], x.abstracts, x.seed)
        curve.append({"train_per_label": per_label, "macro_f1": macro_f1(label_pairs(x.labels, predicted))})
    # The last point trained on every sampled train paper: that classifier is the one reported.
    pairs = label_pairs(x.labels, predicted)
    supported_names = supported_labels(x.labels, x.settings.min_label_support)
    supported = label_pairs(x.labels, predicted, ignore=(set(x.labels) | set(predicted)) - supported_names)
    items = {"macro_f1": pairs, "macro_f1_supported": supported, "weighted_f1": pairs,
             "accuracy": (x.labels == predicted).astype(np.float64)}
    metrics = {
        "accuracy": float(np.mean(items["accuracy"])),
        "macro_f1": macro_f1(pairs),
        "macro_f1_supported": macro_f1(supported),
        "weighted_f1": statistic(pairs, "weighted_f1"),
        "supported_labels": float(len(supported_names)),
    }
    tables = {"learning_curve": pl.DataFrame(curve), "predictions": pl.DataFrame({"actual": x.labels, "predicted": predicted})}
    return LensResult(metrics, items, tables)


@lens
def clustering(x: LensInput) -> LensResult:
    """k-means with k = number of labels, scored against the labels; the papers' (label, cluster) rows are
    the items the intervals resample (the clusters stay as fitted). Papers of `other` (rare categories merged, no
    subject they share) are left out: no cluster should hold them together."""
    from sklearn.cluster import KMeans

    real = x.labels != OTHER
    names, label_ids = np.unique(x.labels[real], return_inverse=True)
    if len(names) < 2:  # one cluster scores 1.0 for any model: no comparison
        raise UserError(f"the test papers hold {len(names)} label(s) besides `{OTHER}` (the rare labels merged), and "
                        "clustering compares two or more: give the test split more papers (evaluate.max_test_papers, "
                        "split.test_fraction) or lower split.min_papers_per_label")
    clusters = KMeans(n_clusters=len(names), n_init=KMEANS_N_INIT, random_state=x.seed).fit_predict(x.abstracts[real])
    rows = np.column_stack([label_ids, clusters]).astype(np.int64)
    items = {name: rows for name in ("homogeneity", "completeness", "ari", "nmi")}
    return LensResult({name: statistic(rows, name) for name in items}, items)


@lens
def binary(x: LensInput) -> LensResult:
    """Both retrieval lenses on 1-bit embeddings through the shipped search's own code
    (arxiv_embed.search.engine: RaBitQ 1-bit codes, FAISS candidates by its inner-product estimate,
    float32 rescoring of evaluate.binary_rescore_multiplier x k of them). storage_ratio: float32
    bytes per vector over the index's at this size (flat: d/8 bytes + 2 floats; partitioned: 2 bits a dimension + an id)."""
    ndcg = {"ndcg@10": ("ndcg", BINARY_K)}
    items = {}
    for name, queries, keys, exclude_self in (("title", x.titles, x.abstract_keys, False),
                                              ("category", x.abstracts, category_keys(x.labels), True)):
        estimated, rescored = binary_search(queries, x.abstracts, BINARY_K, x.settings.binary_rescore_multiplier, exclude_self)
        one_answer = name == "title"  # copies of the paper's abstract: one answer, as title_to_abstract counts them
        items[f"{name}_ndcg@10"] = per_query(estimated, keys, keys, exclude_self, ndcg, one_answer)["ndcg@10"]
        items[f"{name}_rescored_ndcg@10"] = per_query(rescored, keys, keys, exclude_self, ndcg, one_answer)["ndcg@10"]
    result = LensResult.of_means(items)
    dimension = x.abstracts.shape[1]
    result.metrics["storage_ratio"] = 4 * dimension / stored_bytes_per_vector(len(x.abstracts), dimension, "binary")
    return result


@lens(plots=(Plot("map_2d", plot_map, "embeddings_{model}.png", "{model} model: test abstracts", models=("base", "finetuned")),))
def embedding_map(x: LensInput) -> LensResult:
    """A 2-D map of the test abstracts (PCA or t-SNE): a picture, no metric."""
    xy = map_2d(x.abstracts, x.settings.map_2d, x.seed)
    return LensResult({}, tables={"map_2d": pl.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": x.labels})})


# --------------------------------------------------------------------------- helpers of the lenses


def category_keys(labels: np.ndarray) -> np.ndarray:
    """What category retrieval matches on: the label, but each paper of `other` (split's merged rare categories, no
    subject they share) a key of its own, so that it is nobody's same-category answer and its query, without one,
    is left out."""
    keys = labels.astype(object)
    keys[labels == OTHER] = [f"{OTHER}#{row}" for row in np.flatnonzero(labels == OTHER)]
    return keys


def supported_labels(actual: np.ndarray, min_support: int) -> set[str]:
    """The labels with at least `min_support` test papers: macro_f1_supported averages over these only (a
    label predicted but absent from the test papers, e.g. one whose stratified quota was 0, is not one; nor
    `other`, rare categories merged, whose F1 says nothing of one subject)."""
    names, support = np.unique(actual[actual != OTHER], return_counts=True)
    if len(names) and support.max() < min_support:  # no label counted: an F1 of 0 for both models that no gate could fail
        raise UserError(f"evaluate.min_label_support={min_support}, but no label has that many test papers (the most: "
                        f"{support.max()}); lower it in params.yaml, or give the test split more papers (evaluate.max_test_papers "
                        "where it caps them, split.test_fraction, more records, or shared.label: archive for fewer, larger labels)")
    return set(names[support >= min_support].tolist())


def label_pairs(actual: np.ndarray, predicted: np.ndarray, ignore: set[str] = frozenset()) -> np.ndarray:
    """(n, 2) label ids of (actual, predicted); labels in `ignore` become -1, which macro_f1 skips."""
    names = sorted(set(actual) | set(predicted))
    ids = {name: -1 if name in ignore else i for i, name in enumerate(names)}
    return np.array([[ids[a], ids[p]] for a, p in zip(actual, predicted)], dtype=np.int64).reshape(-1, 2)


def classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int) -> np.ndarray:
    """Logistic regression on frozen embeddings: the test papers' predicted labels."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_y)) < 2:
        raise UserError("classification needs train papers of at least 2 labels: raise evaluate.max_train_papers (papers it "
                        "learns from, dealt round-robin over labels), or check split.min_papers_per_label")
    return LogisticRegression(max_iter=1000, random_state=seed).fit(train_x, train_y).predict(test_x)


def learning_curve_sizes(train_rank: np.ndarray, sizes: list[int]) -> list[int]:
    """Papers per label for each point: the requested sizes below "all", then "all" (the largest label's count)."""
    everything = int(train_rank.max()) + 1
    if too_large := sorted({size for size in sizes if size >= everything}):
        print(f"evaluate: learning_curve_sizes {too_large}: the train sample's largest label has {everything} papers, so its "
              "curve ends there (raise evaluate.max_train_papers for larger points)")
    return sorted({size for size in sizes if size < everything}) + [everything]


def map_2d(embeddings: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(embeddings) - 1) / 3)
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(embeddings)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
