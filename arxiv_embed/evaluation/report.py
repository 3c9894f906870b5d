"""One model's evaluation (saved by evaluate_base / evaluate), and the side-by-side report:
base, fine-tuned, delta and a paired bootstrap 95% interval for each delta."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import polars as pl

from arxiv_embed.errors import UserError
from arxiv_embed.files import atomic_path
from arxiv_embed.flat import flatten

if TYPE_CHECKING:
    from arxiv_embed.evaluation.lenses import LensResult

BOOTSTRAP_RESAMPLES = 1000
RESAMPLE_BLOCK = 50  # resamples drawn and scored at a time: memory ~ 50 x the items, whatever evaluate.max_test_papers
CLUSTER_SCORES = frozenset({"homogeneity", "completeness", "ari", "nmi"})  # of (label, cluster) rows; other label-pair metrics are F1s
# Scores of a label x cluster table (entropies, pair counts) depend on how many distinct papers it holds: a
# resample holds ~63% of the papers, some several times, so its delta is a smaller sample's, not this one's (on the default run the
# observed homogeneity delta sat at the 88th percentile of its resamples, near the interval's top). Their intervals
# keep the resamples' spread, centred on the observed delta. F1 and per-item means show no such shift: percentiles.
RECENTRED = CLUSTER_SCORES


def macro_f1(pairs: np.ndarray) -> float:
    """Macro-F1 of (actual, predicted) label-id rows over every label id >= 0 that occurs."""
    from sklearn.metrics import f1_score

    labels = np.unique(pairs)
    labels = labels[labels != -1]
    return float(f1_score(pairs[:, 0], pairs[:, 1], labels=labels, average="macro", zero_division=0)) if len(labels) else 0.0


def _pair_statistics() -> dict:
    """Metrics of (label, label) rows other than macro-F1, by metric name: (actual, predicted) for the
    classifier's weighted F1, (label, cluster) for k-means' scores."""
    from sklearn.metrics import adjusted_rand_score, completeness_score, f1_score, homogeneity_score, normalized_mutual_info_score

    # NMI (arithmetic mean) is V-measure, the harmonic mean of homogeneity and completeness: its two halves say which
    # way a clustering errs (clusters that mix labels, or labels split across clusters).
    return {"weighted_f1": lambda rows: f1_score(rows[:, 0], rows[:, 1], average="weighted", zero_division=0),
            "homogeneity": lambda rows: homogeneity_score(rows[:, 0], rows[:, 1]),
            "completeness": lambda rows: completeness_score(rows[:, 0], rows[:, 1]),
            "ari": lambda rows: adjusted_rand_score(rows[:, 0], rows[:, 1]),
            "nmi": lambda rows: normalized_mutual_info_score(rows[:, 0], rows[:, 1])}


def statistic(items: np.ndarray, name: str = "") -> float:
    """The metric a per-item array stands for: its mean; for rows of two labels, the metric its name
    ("lens.metric" or "metric") says, macro-F1 unless named otherwise."""
    if items.ndim == 1:
        return float(np.mean(items))
    pair_metric = _pair_statistics().get(name.rsplit(".", 1)[-1])
    return float(pair_metric(items)) if pair_metric else macro_f1(items)


def label_pair_resampler(rows: np.ndarray, name: str = "") -> Callable[[np.ndarray], np.ndarray]:
    """A function of draws (resamples x items) giving statistic(rows[d], name) for each resample d, for rows of two labels.

    Every label-pair metric is a function of a resample's table of (actual, predicted) or (label, cluster) counts, so
    the resamples are scored from their tables at once, with the formulas sklearn uses (tests hold each to sklearn).
    One sklearn call per resample costs 5-75 ms at 20k test papers: ~2 min per evaluate."""
    metric = name.rsplit(".", 1)[-1]
    distinct, cell_of_row = np.unique(rows, axis=0, return_inverse=True)
    labels, ids = np.unique(distinct, return_inverse=True)
    first, second = ids.reshape(-1, 2).T  # each distinct row (a table's cell) and its label index on either side
    cell_of_row, n_cells = cell_of_row.ravel(), len(distinct)
    sum_first, sum_second = _summer(first, len(labels)), _summer(second, len(labels))
    diagonal = first == second  # cells of an abstract given its own label: at most one a label

    def scores(draws: np.ndarray) -> np.ndarray:
        offsets = np.arange(len(draws))[:, None] * n_cells
        cells = np.bincount((cell_of_row[draws] + offsets).ravel(), minlength=len(draws) * n_cells)
        cells = cells.reshape(len(draws), n_cells).astype(np.float64)
        actual, predicted = sum_first(cells), sum_second(cells)  # tables x labels: each table's margins
        total = cells.sum(axis=1)
        if metric not in CLUSTER_SCORES:  # weighted F1, or macro-F1 (statistic's default)
            agree = np.zeros_like(actual)
            agree[:, first[diagonal]] = cells[:, diagonal]
            both = actual + predicted
            f1 = np.divide(2 * agree, both, out=np.zeros_like(both), where=both > 0)  # zero_division=0
            if metric == "weighted_f1":  # every label, weighted by its actual count
                return (f1 * actual).sum(axis=1) / total
            counted = (both > 0) & (labels != -1)  # macro_f1: the labels the table holds, -1 (not counted) left out
            return np.divide((f1 * counted).sum(axis=1), counted.sum(axis=1), out=np.zeros(len(cells)), where=counted.any(axis=1))
        if metric == "ari":  # from the pair confusion matrix, in floats: its products outgrow int64 past ~55k papers
            squares = (cells ** 2).sum(axis=1)
            same_first = (cells * actual[:, first]).sum(axis=1) - squares  # pairs together in the first labelling only
            same_second = (cells * predicted[:, second]).sum(axis=1) - squares
            together, apart = squares - total, total ** 2 - same_first - same_second - squares
            denominator = (together + same_first) * (same_first + apart) + (together + same_second) * (same_second + apart)
            score = np.divide(2.0 * (together * apart - same_first * same_second), denominator,
                              out=np.ones(len(cells)), where=denominator != 0)
            return np.where((same_first == 0) & (same_second == 0), 1.0, score)
        entropy_first, entropy_second = _entropy(actual, total), _entropy(predicted, total)
        first_single, second_single = (actual > 0).sum(axis=1) == 1, (predicted > 0).sum(axis=1) == 1
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = cells / total[:, None] * (np.log(cells) + np.log(total)[:, None] - np.log(actual[:, first]) - np.log(predicted[:, second]))
        information = np.where(first_single | second_single, 0.0, np.clip(np.where(cells > 0, terms, 0.0).sum(axis=1), 0.0, None))
        if metric == "homogeneity":
            return np.divide(information, entropy_first, out=np.ones(len(cells)), where=entropy_first > 0)
        if metric == "completeness":
            return np.divide(information, entropy_second, out=np.ones(len(cells)), where=entropy_second > 0)
        normaliser = (entropy_first + entropy_second) / 2  # nmi, arithmetic mean; 1 for one label and one cluster
        nmi = np.divide(information, normaliser, out=np.zeros(len(cells)), where=(information > 0) & (normaliser > 0))
        return np.where(first_single & second_single, 1.0, nmi)

    return scores


def _summer(label_of_cell: np.ndarray, n_labels: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function of cells (tables x cells) giving each table's cells summed by label (tables x n_labels)."""
    order = np.argsort(label_of_cell, kind="stable")
    present, starts = np.unique(label_of_cell[order], return_index=True)

    def summed(cells: np.ndarray) -> np.ndarray:
        margins = np.zeros((len(cells), n_labels))
        margins[:, present] = np.add.reduceat(cells[:, order], starts, axis=1)
        return margins

    return summed


def _entropy(counts: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Each row's entropy of its label counts (natural log), 0 for a single label."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = counts / total[:, None] * (np.log(counts) - np.log(total)[:, None])
    return -np.where(counts > 0, terms, 0.0).sum(axis=1)


@dataclass
class ModelEval:
    metrics: dict[str, dict[str, float]]  # lens -> metric -> value
    items: dict[str, np.ndarray]  # "lens.metric" -> per-item values (for paired intervals)
    tables: dict[str, pl.DataFrame]  # learning_curve, predictions, map_2d, ...

    @classmethod
    def of(cls, results: dict[str, LensResult]) -> ModelEval:
        tables: dict[str, pl.DataFrame] = {}
        for result in results.values():
            if clash := tables.keys() & result.tables.keys():
                raise ValueError(f"two lenses return a table named {sorted(clash)}")
            tables |= result.tables
        return cls(
            metrics={name: result.metrics for name, result in results.items() if result.metrics},
            items={f"{name}.{metric}": values for name, result in results.items() for metric, values in result.items.items()},
            tables=tables,
        )

    def save(self, directory: Path, scope: dict | None = None) -> None:
        """scope: what the scores depend on besides the model (params, the items' hash), read back by read_scope."""
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2) + "\n", encoding="utf-8")
            (tmp / "scope.json").write_text(json.dumps(scope or {}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            np.savez_compressed(tmp / "items.npz", **self.items)
            for name, table in self.tables.items():
                table.write_parquet(tmp / f"{name}.parquet")

    @classmethod
    def load(cls, directory: Path) -> ModelEval:
        if not (directory / "metrics.json").exists():
            raise UserError(f"{directory}/metrics.json is missing: run `dvc repro evaluate_base` first")
        with np.load(directory / "items.npz") as items:
            return cls(
                json.loads((directory / "metrics.json").read_text(encoding="utf-8")),
                {name: items[name] for name in items.files},
                {path.stem: pl.read_parquet(path) for path in sorted(directory.glob("*.parquet"))},
            )


def read_scope(directory: Path) -> dict:
    """The scope a ModelEval was saved with ({} for an evaluation saved before scopes were)."""
    if not (directory / "metrics.json").exists():
        raise UserError(f"{directory}/metrics.json is missing: run `dvc repro evaluate_base` first")
    return json.loads((directory / "scope.json").read_text(encoding="utf-8")) if (directory / "scope.json").exists() else {}


def delta(finetuned: dict, base: dict) -> dict:
    """finetuned - base for every number, same nesting."""
    return {
        key: delta(value, base[key]) if isinstance(value, dict) else value - base[key]
        for key, value in finetuned.items()
        if key in base
    }


def paired_intervals(base: ModelEval, finetuned: ModelEval, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, list[float]]:
    """"lens.metric" -> [low, high]: the 95% percentile interval of finetuned - base over paired
    bootstrap resamples of the same items (queries, triplets, test papers) for both models. The resamples
    depend on the seed and the number of items only: a metric's interval does not move when another
    metric is added before it, and metrics over the same items share their resamples. The clustering
    scores' intervals are recentred on the observed delta (RECENTRED)."""
    paired = {name: (base.items[name], tuned) for name, tuned in finetuned.items.items()
              if name in base.items and len(base.items[name]) == len(tuned) and len(tuned)}
    intervals = {}
    for name, (untuned, tuned) in paired.items():
        rng = np.random.default_rng([seed, len(tuned)])
        if tuned.ndim > 1:
            score_tuned, score_untuned = label_pair_resampler(tuned, name), label_pair_resampler(untuned, name)
        blocks = []
        for start in range(0, resamples, RESAMPLE_BLOCK):  # the same draws as one (resamples x items) array, a block at a time
            draws = rng.integers(0, len(tuned), size=(min(RESAMPLE_BLOCK, resamples - start), len(tuned)))
            blocks.append((tuned[draws] - untuned[draws]).mean(axis=1) if tuned.ndim == 1 else score_tuned(draws) - score_untuned(draws))
        deltas = np.concatenate(blocks)
        low, high = np.percentile(deltas, [2.5, 97.5])
        lens, metric = name.rsplit(".", 1)
        if metric in RECENTRED:  # the reported delta, as ModelEval holds it
            shift = finetuned.metrics[lens][metric] - base.metrics[lens][metric] - float(np.median(deltas))
            low, high = low + shift, high + shift
        intervals[name] = [float(low), float(high)]
    return intervals


def compare(base: ModelEval, finetuned: ModelEval, seed: int) -> dict:
    """The report: base, fine-tuned, delta (nested by lens) and delta_ci95 ("lens.metric" -> [low, high])."""
    return {
        "base": base.metrics,
        "finetuned": finetuned.metrics,
        "delta": delta(finetuned.metrics, base.metrics),
        "delta_ci95": paired_intervals(base, finetuned, seed),
    }


def report_markdown(report: dict, summary: dict[str, int], note: str = "") -> str:
    base, finetuned, change = (flatten(report[side]) for side in ("base", "finetuned", "delta"))
    intervals = report.get("delta_ci95", {})

    def interval(name: str) -> str:
        low_high = intervals.get(name)
        return f"[{low_high[0]:+.4f}, {low_high[1]:+.4f}]" if low_high else ""

    lines = [
        "# Evaluation: base vs fine-tuned",
        "",
        ", ".join(f"{name.replace('_', ' ')}: {count:,}" for name, count in summary.items()),
        "",
        *([note, ""] if note else []),
        "A delta is real only when its paired-bootstrap 95% interval excludes 0.",
        "",
        "| metric | base | fine-tuned | delta | delta 95% interval |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {base[name]:.4f} | {finetuned[name]:.4f} | {change[name]:+.4f} | {interval(name)} |" for name in change]
    return "\n".join(lines) + "\n"
