"""The evaluation lenses and "evaluate one model on the held-out papers", shared by evaluate, search
and the benchmarks.

Every lens reads embeddings computed once per model (`embed_texts`), so each distinct text is encoded
once however many lenses use it. Rankings break score ties by the lower corpus index, which is the
order InformationRetrievalEvaluator uses when corpus ids sort like their positions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from arxiv_embed import paths
from arxiv_embed.files import atomic_path
from arxiv_embed.models import encode

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from arxiv_embed.params import Evaluate

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
BINARY_K = 10  # the 1-bit lens reports NDCG@10
KMEANS_N_INIT = 10
BLOCK_ELEMENTS = 1 << 24  # query rows are scored in blocks of about this many cells (64 MiB of float32)


# ---------------------------------------------------------------------------------------------
# Data: the test split, a label-balanced slice of the train split, the test triplets.


@dataclass(frozen=True)
class EvalData:
    test: pl.DataFrame  # title, abstract, label
    train: pl.DataFrame  # abstract, label, rank (position of the paper within its label)
    triplets: pl.DataFrame  # anchor, positive, negative, negative_type

    def texts(self) -> list[str]:
        """Every distinct text a lens embeds, in a stable order."""
        columns = [self.test["abstract"], self.test["title"], self.train["abstract"]]
        columns += [self.triplets[name] for name in ("anchor", "positive", "negative")]
        return pl.concat([column.alias("text") for column in columns]).unique(maintain_order=True).to_list()

    def summary(self) -> dict[str, int]:
        return {
            "test_papers": self.test.height,
            "labels": self.test["label"].n_unique(),
            "train_papers": self.train.height,
            "test_triplets": self.triplets.height,
        }


def read_table(path: Path, columns: list[str], produced_by: str) -> pl.DataFrame:
    """The named columns of a parquet file, or an error that names the file and the stage to rerun."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro {produced_by}` first")
    table = pl.read_parquet(path)
    missing = [name for name in columns if name not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing} (has {table.columns}): rerun `dvc repro {produced_by}`")
    table = table.select(columns)
    nulls = {name: count for name, count in zip(columns, table.null_count().row(0)) if count}
    if nulls:
        raise ValueError(f"{path} has null values {nulls}: {produced_by} must not write papers without text or label")
    if table.is_empty():
        raise ValueError(f"{path} has no rows: check the {produced_by} params")
    return table


def balanced_sample(papers: pl.DataFrame, max_papers: int, seed: int) -> pl.DataFrame:
    """Up to `max_papers`, dealt round-robin over labels in a seeded random order.

    Small labels keep all their papers and large ones cannot crowd them out. `rank` (the paper's
    position within its label) makes the learning curve's subsets nested: n per label = rank < n.
    """
    rng = np.random.default_rng(seed)
    shuffled = papers[rng.permutation(papers.height)].with_row_index("_order")
    ranked = shuffled.with_columns(rank=pl.int_range(pl.len()).over("label"))
    return ranked.sort("rank", "_order").head(max_papers).drop("_order")


def load_eval_data(max_train_papers: int, seed: int) -> EvalData:
    test = read_table(paths.split_file("test"), ["title", "abstract", "label"], "split")
    train = read_table(paths.split_file("train"), ["abstract", "label"], "split")
    triplets = read_table(
        paths.training_file("test", "triplets"), ["anchor", "positive", "negative", "negative_type"], "make_triplets"
    )
    return EvalData(test, balanced_sample(train, max_train_papers, seed), triplets)


# ---------------------------------------------------------------------------------------------
# Embeddings: one encode call per model and run; lookups by text.


class Embeddings:
    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.index = {text: row for row, text in enumerate(texts)}
        self.vectors = vectors

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        return self.vectors[[self.index[text] for text in texts]]


def embed_texts(model: SentenceTransformer, texts: list[str], batch_size: int, progress: bool = True) -> Embeddings:
    return Embeddings(texts, encode(model, texts, batch_size=batch_size, progress=progress))


# ---------------------------------------------------------------------------------------------
# Metrics on embeddings.


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def triplet_accuracy(anchors: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """Share of triplets with cos(anchor, positive) > cos(anchor, negative), as TripletEvaluator (margin 0)."""
    anchors, positives, negatives = map(_normalise, (anchors, positives, negatives))
    return float(np.mean((anchors * positives).sum(1) > (anchors * negatives).sum(1)))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, best first; equal scores go to the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def _blocks(n_rows: int, cells_per_row: int) -> Iterator[slice]:
    step = max(1, BLOCK_ELEMENTS // max(cells_per_row, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _drop_self(block: np.ndarray, rows: slice, worst: float | int) -> np.ndarray:
    """Queries are corpus rows `rows`: give each its own column the worst score so it is never retrieved."""
    positions = np.arange(rows.stop - rows.start)
    block[positions, positions + rows.start] = worst
    return block


def search(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Top-k corpus rows per query by cosine similarity (Q x k). exclude_self: query i is corpus row i."""
    queries, corpus = _normalise(queries), _normalise(corpus)
    k = min(k, len(corpus) - exclude_self)
    ranked = [np.empty((0, k), dtype=np.int64)]
    for rows in _blocks(len(queries), len(corpus)):
        scores = queries[rows] @ corpus.T
        ranked.append(top_k(_drop_self(scores, rows, -np.inf) if exclude_self else scores, k))
    return np.concatenate(ranked)


def quantize_binary(embeddings: np.ndarray) -> np.ndarray:
    """1 bit per dimension (positive -> 1), packed 8 to a byte: sentence-transformers' "ubinary"."""
    from sentence_transformers.util.quantization import quantize_embeddings

    return quantize_embeddings(np.asarray(embeddings, dtype=np.float32), precision="ubinary")


def hamming_search(query_bits: np.ndarray, corpus_bits: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Top-k corpus rows per query by Hamming distance, nearest first; equal distances go to the lower index."""
    k = min(k, len(corpus_bits) - exclude_self)
    ranked = [np.empty((0, k), dtype=np.int64)]
    for rows in _blocks(len(query_bits), len(corpus_bits) * corpus_bits.shape[1]):
        distances = np.bitwise_count(query_bits[rows, None, :] ^ corpus_bits[None, :, :]).sum(-1, dtype=np.int32)
        if exclude_self:
            _drop_self(distances, rows, np.iinfo(np.int32).max)
        ranked.append(top_k(-distances.astype(np.int64), k))
    return np.concatenate(ranked)


def rescore(queries: np.ndarray, corpus_bits: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Reorder each query's 1-bit candidates by float query . unpacked corpus bits and keep k.

    This is sentence-transformers' rescoring (`semantic_search_faiss`): only the query is float, the
    corpus stays 1-bit, so the storage ratio holds. Equal scores keep the Hamming order.
    """
    bits = np.unpackbits(corpus_bits, axis=1)[:, : queries.shape[1]].astype(np.float32)
    reranked = [np.empty((0, min(k, candidates.shape[1])), dtype=np.int64)]
    for rows in _blocks(len(queries), len(bits)):
        scores = np.take_along_axis(queries[rows] @ bits.T, candidates[rows], axis=1)
        reranked.append(np.take_along_axis(candidates[rows], top_k(scores, k), axis=1))
    return np.concatenate(reranked)


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


def retrieval_metrics(
    ranked: np.ndarray,
    query_keys: np.ndarray,
    corpus_keys: np.ndarray,
    exclude_self: bool = False,
    metrics: dict[str, tuple[str, int]] = RETRIEVAL_METRICS,
) -> dict[str, float]:
    """MRR, NDCG, recall and MAP at cutoffs, computed as InformationRetrievalEvaluator does.

    `ranked` holds corpus rows per query, best first (at least the largest cutoff where the corpus
    has that many). A document is relevant to a query when their keys are equal; with exclude_self,
    query i is corpus row i and does not count. Queries without a relevant document are left out,
    as the evaluator leaves them out.
    """
    query_keys, corpus_keys = np.asarray(query_keys), np.asarray(corpus_keys)
    keys, counts = np.unique(corpus_keys, return_counts=True)
    where = np.clip(np.searchsorted(keys, query_keys), 0, len(keys) - 1)
    n_relevant = np.where(keys[where] == query_keys, counts[where], 0) - int(exclude_self)
    answerable = n_relevant > 0
    if not answerable.any():
        raise ValueError("no query has a relevant document: every label has a single test paper")
    hits = (corpus_keys[ranked] == query_keys[:, None])[answerable].astype(np.float64)
    n_relevant = n_relevant[answerable]
    return {name: float(np.mean(_METRIC_FUNCTIONS[kind](hits, n_relevant, k))) for name, (kind, k) in metrics.items()}


def classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int) -> np.ndarray:
    """Logistic regression on frozen embeddings: the test papers' predicted labels."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_y)) < 2:
        raise ValueError("classification needs at least 2 labels in the train split; check split.min_papers_per_label")
    return LogisticRegression(max_iter=1000, random_state=seed).fit(train_x, train_y).predict(test_x)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
    }


def learning_curve_sizes(train_rank: np.ndarray, sizes: list[int]) -> list[int]:
    """Papers per label for each point: the requested sizes below "all", then "all" (the largest label's count)."""
    everything = int(train_rank.max()) + 1
    return sorted({size for size in sizes if size < everything}) + [everything]


def clustering_metrics(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """k-means with k = number of labels, scored against the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, v_measure_score

    k = len(np.unique(labels))
    clusters = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit_predict(embeddings)
    return {
        "v_measure": float(v_measure_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
    }


def map_2d(embeddings: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(embeddings) - 1) / 3)
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(embeddings)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(embeddings)


# ---------------------------------------------------------------------------------------------
# One model through every lens.


@dataclass
class ModelEval:
    metrics: dict  # the per-model block of metrics/evaluate.json
    learning_curve: pl.DataFrame  # train_per_label, macro_f1
    predictions: pl.DataFrame  # actual, predicted (test papers, classifier trained on all train papers)
    coordinates: pl.DataFrame  # x, y, label (2-D map of the test abstracts)

    def save(self, directory: Path) -> None:
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2) + "\n", encoding="utf-8")
            self.learning_curve.write_csv(tmp / "learning_curve.csv")
            self.predictions.write_parquet(tmp / "predictions.parquet")
            self.coordinates.write_parquet(tmp / "map_2d.parquet")

    @classmethod
    def load(cls, directory: Path) -> ModelEval:
        if not (directory / "metrics.json").exists():
            raise FileNotFoundError(f"{directory}/metrics.json is missing: run `dvc repro evaluate_base` first")
        return cls(
            json.loads((directory / "metrics.json").read_text(encoding="utf-8")),
            pl.read_csv(directory / "learning_curve.csv"),
            pl.read_parquet(directory / "predictions.parquet"),
            pl.read_parquet(directory / "map_2d.parquet"),
        )


def triplet_metrics(embed: Embeddings, triplets: pl.DataFrame) -> dict[str, float]:
    def accuracy(rows: pl.DataFrame) -> float:
        return triplet_accuracy(embed(rows["anchor"]), embed(rows["positive"]), embed(rows["negative"]))

    metrics = {"triplet_accuracy": accuracy(triplets)}
    kinds = triplets.partition_by("negative_type", as_dict=True)
    if {("random",), ("hard",)} <= kinds.keys():
        metrics |= {f"triplet_accuracy_{kind}": accuracy(kinds[(kind,)]) for kind in ("random", "hard")}
    return metrics


def binary_metrics(titles: np.ndarray, abstracts: np.ndarray, labels: np.ndarray, multiplier: int) -> dict[str, float]:
    """Both retrieval lenses on 1-bit embeddings: Hamming search, then with float-query rescoring."""
    ndcg = {"ndcg@10": ("ndcg", BINARY_K)}
    papers = np.arange(len(abstracts))
    corpus_bits = quantize_binary(abstracts)
    metrics = {}
    for lens, queries, keys, exclude_self in (
        ("title_to_abstract", titles, papers, False),
        ("category_retrieval", abstracts, labels, True),
    ):
        candidates = hamming_search(quantize_binary(queries), corpus_bits, BINARY_K * multiplier, exclude_self)
        rescored = rescore(queries, corpus_bits, candidates, BINARY_K)
        metrics[f"{lens}_ndcg@10"] = retrieval_metrics(candidates, keys, keys, exclude_self, ndcg)["ndcg@10"]
        metrics[f"{lens}_ndcg@10_rescored"] = retrieval_metrics(rescored, keys, keys, exclude_self, ndcg)["ndcg@10"]
    metrics["storage_ratio"] = abstracts.astype(np.float32).nbytes / corpus_bits.nbytes
    return metrics


def evaluate_model(model: SentenceTransformer, data: EvalData, settings: Evaluate, seed: int, progress: bool = True) -> ModelEval:
    embed = embed_texts(model, data.texts(), settings.batch_size, progress)
    abstracts, titles = embed(data.test["abstract"]), embed(data.test["title"])
    labels, papers = data.test["label"].to_numpy(), np.arange(data.test.height)

    metrics = triplet_metrics(embed, data.triplets)
    metrics["title_to_abstract"] = retrieval_metrics(search(titles, abstracts, MAX_K), papers, papers)
    metrics["category_retrieval"] = retrieval_metrics(
        search(abstracts, abstracts, MAX_K, exclude_self=True), labels, labels, exclude_self=True
    )

    train_x, train_y = embed(data.train["abstract"]), data.train["label"].to_numpy()
    train_rank = data.train["rank"].to_numpy()
    curve = []
    for per_label in learning_curve_sizes(train_rank, settings.learning_curve_sizes):
        subset = train_rank < per_label
        predicted = classify(train_x[subset], train_y[subset], abstracts, seed)
        curve.append({"train_per_label": per_label, "macro_f1": classification_metrics(labels, predicted)["macro_f1"]})
    # The last point trained on every sampled train paper: that classifier is the one reported.
    metrics["classification"] = classification_metrics(labels, predicted)
    metrics["clustering"] = clustering_metrics(abstracts, labels, seed)
    metrics["binary"] = binary_metrics(titles, abstracts, labels, settings.binary_rescore_multiplier)

    xy = map_2d(abstracts, settings.map_2d, seed)
    return ModelEval(
        metrics=metrics,
        learning_curve=pl.DataFrame(curve),
        predictions=pl.DataFrame({"actual": labels, "predicted": predicted}),
        coordinates=pl.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": labels}),
    )


# ---------------------------------------------------------------------------------------------
# The combined report: delta, flat rows, Markdown, plots.


def delta(finetuned: dict, base: dict) -> dict:
    """finetuned - base for every number, same nesting."""
    return {
        key: delta(value, base[key]) if isinstance(value, dict) else value - base[key]
        for key, value in finetuned.items()
        if key in base
    }


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics -> dotted keys (`category_retrieval.ndcg@10`), in order."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else key
        flat |= flatten_metrics(value, name) if isinstance(value, dict) else {name: value}
    return flat


def report_markdown(report: dict, summary: dict[str, int]) -> str:
    base, finetuned, change = (flatten_metrics(report[side]) for side in ("base", "finetuned", "delta"))
    lines = [
        "# Evaluation: base vs fine-tuned",
        "",
        ", ".join(f"{name.replace('_', ' ')}: {count:,}" for name, count in summary.items()),
        "",
        "| metric | base | fine-tuned | delta |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {base[name]:.4f} | {finetuned[name]:.4f} | {change[name]:+.4f} |" for name in change]
    return "\n".join(lines) + "\n"


def _figure(width: float = 6.4, height: float = 4.8):
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_learning_curve(curves: pl.DataFrame, path: Path) -> None:
    """`curves`: train_per_label plus one macro-F1 column per model."""
    fig = _figure()
    ax = fig.subplots()
    sizes = curves["train_per_label"].to_list()
    for model in curves.columns[1:]:
        ax.plot(sizes, curves[model], marker="o", label=model)
    ax.set(xscale="log", xlabel="training papers per label", ylabel="macro-F1", title="Classification learning curve")
    ax.set_xticks(sizes, labels=[*map(str, sizes[:-1]), f"{sizes[-1]} (all)"], minor=False)
    ax.minorticks_off()
    ax.legend()
    fig.savefig(path, dpi=100)


def plot_confusion(predictions: pl.DataFrame, path: Path, title: str) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    n_labels = predictions["actual"].n_unique()
    fig = _figure(max(6.0, 0.35 * n_labels + 3), max(5.0, 0.35 * n_labels + 2))
    ax = fig.subplots()
    # Row-normalised: with imbalanced labels, raw counts show only the largest label.
    ConfusionMatrixDisplay.from_predictions(
        predictions["actual"], predictions["predicted"], normalize="true", ax=ax, xticks_rotation="vertical",
        include_values=n_labels <= 12, values_format=".2f",
    )
    ax.set_title(title)
    fig.savefig(path, dpi=100)


def plot_map(coordinates: pl.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    fig = _figure(8, 6)
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab20"].colors
    for i, (label, points) in enumerate(sorted(coordinates.partition_by("label", as_dict=True).items())):
        # 20 colours x 4 markers keep up to 80 labels apart.
        ax.scatter(points["x"], points["y"], s=10, alpha=0.75, label=label[0], color=colours[i % 20], marker="os^D"[i // 20 % 4])
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5), ncols=1 + len(ax.collections) // 25)
    fig.savefig(path, dpi=100)
