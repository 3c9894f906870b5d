"""One model's evaluation (saved by evaluate_base / evaluate), and the side-by-side report:
base, fine-tuned, delta and a paired bootstrap 95% interval for each delta."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from arxiv_embed.errors import UserError
from arxiv_embed.files import atomic_path
from arxiv_embed.flat import flatten
from arxiv_embed.progress import Progress

if TYPE_CHECKING:
    from arxiv_embed.evaluation.lenses import LensResult

BOOTSTRAP_RESAMPLES = 1000
# Scores of a label x cluster table (entropies, pair counts) depend on how many distinct papers it holds: a
# resample holds ~63% of the papers, some several times, so its delta is a smaller sample's, not this one's (on the default run the
# observed homogeneity delta sat at the 88th percentile of its resamples, near the interval's top). Their intervals
# keep the resamples' spread, centred on the observed delta. F1 and per-item means show no such shift: percentiles.
RECENTRED = {"homogeneity", "completeness", "ari", "nmi"}


def macro_f1(pairs: np.ndarray) -> float:
    """Macro-F1 of (actual, predicted) label-id rows over every label id >= 0 that occurs."""
    from sklearn.metrics import f1_score

    labels = sorted(set(pairs.ravel().tolist()) - {-1})
    return float(f1_score(pairs[:, 0], pairs[:, 1], labels=labels, average="macro", zero_division=0)) if labels else 0.0


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
    # Label-pair metrics (F1, clustering scores) recompute sklearn per resample: ~1 min at 20k test papers.
    meter = Progress("evaluate: bootstrap intervals", total=resamples * sum(tuned.ndim > 1 for _, tuned in paired.values()), unit="resamples")
    intervals = {}
    for name, (untuned, tuned) in paired.items():
        draws = np.random.default_rng([seed, len(tuned)]).integers(0, len(tuned), size=(resamples, len(tuned)))
        if tuned.ndim == 1:
            deltas = (tuned[draws] - untuned[draws]).mean(axis=1)
        else:
            deltas = np.empty(resamples)
            for i, rows in enumerate(draws):
                deltas[i] = statistic(tuned[rows], name) - statistic(untuned[rows], name)
                meter.update()
        low, high = np.percentile(deltas, [2.5, 97.5])
        lens, metric = name.rsplit(".", 1)
        if metric in RECENTRED:  # the reported delta, as ModelEval holds it
            shift = finetuned.metrics[lens][metric] - base.metrics[lens][metric] - float(np.median(deltas))
            low, high = low + shift, high + shift
        intervals[name] = [float(low), float(high)]
    if meter.total:
        meter.done()
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
