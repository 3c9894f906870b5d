"""intervals: evaluate's paired-bootstrap intervals (evaluation/report.paired_intervals) at the snapshot's size.

evaluate scores `evaluate.max_test_papers` (20,000) test papers; at the snapshot's ~150 primary categories the
classifier's and k-means' rows are (label, label) pairs whose metrics (macro-F1, supported macro-F1, weighted F1,
homogeneity, completeness, ARI, NMI) are resampled 1,000 times for each model. The rows here are synthetic (a
label per paper, the right label 60% / 62% of the time, else a random one); the baseline is sklearn called once per
resample (the code before 2026-12-07), timed over `--intervals-sklearn-resamples` and scaled to 1,000.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from benchmarks.common import Report

QUICK = {"intervals_papers": 2_000, "intervals_sklearn_resamples": 5}
PAIR_METRICS = {"classification": ["macro_f1", "macro_f1_supported", "weighted_f1"],
                "clustering": ["homogeneity", "completeness", "ari", "nmi"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--intervals-papers", type=int, default=20_000, help="intervals: test papers (evaluate.max_test_papers)")
    parser.add_argument("--intervals-labels", type=int, default=150, help="intervals: labels (the snapshot's primary categories)")
    parser.add_argument("--intervals-sklearn-resamples", type=int, default=20, help="intervals: resamples the baseline is timed over")


def evaluation(papers: int, labels: int, right: float, rng: np.random.Generator):
    from arxiv_embed.evaluation.report import ModelEval, statistic

    actual = rng.integers(0, labels, papers)
    items = {}
    for lens, metrics in PAIR_METRICS.items():
        for metric in metrics:
            guessed = np.where(rng.random(papers) < right, actual, rng.integers(0, labels, papers))
            if metric == "macro_f1_supported":  # a tenth of the labels under evaluate.min_label_support: -1
                guessed, actual_here = np.where(guessed % 10 == 9, -1, guessed), np.where(actual % 10 == 9, -1, actual)
            else:
                actual_here = actual
            items[f"{lens}.{metric}"] = np.column_stack([actual_here, guessed])
    metrics = {lens: {metric: statistic(items[f"{lens}.{metric}"], metric) for metric in names} for lens, names in PAIR_METRICS.items()}
    return ModelEval(metrics, items, {})


def run(args: argparse.Namespace) -> Report:
    from arxiv_embed.evaluation.report import BOOTSTRAP_RESAMPLES, paired_intervals, statistic

    report = Report("intervals")
    rng = np.random.default_rng(0)
    base = evaluation(args.intervals_papers, args.intervals_labels, 0.60, rng)
    tuned = evaluation(args.intervals_papers, args.intervals_labels, 0.62, rng)
    tracemalloc.start()  # numpy's arrays are counted: the intervals' own peak, the two evaluations' rows excluded
    started = time.perf_counter()
    paired_intervals(base, tuned, seed=42)
    ours = time.perf_counter() - started
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    started = time.perf_counter()
    draws = np.random.default_rng(1).integers(0, args.intervals_papers, size=(args.intervals_sklearn_resamples, args.intervals_papers))
    for name, rows in tuned.items.items():
        for drawn in draws:
            statistic(rows[drawn], name) - statistic(base.items[name][drawn], name)
    sklearn_s = (time.perf_counter() - started) * BOOTSTRAP_RESAMPLES / args.intervals_sklearn_resamples
    report.add(f"paired intervals of the 7 label-pair metrics, {args.intervals_papers:,} test papers, {args.intervals_labels} labels, "
               f"{BOOTSTRAP_RESAMPLES:,} resamples (s)", round(ours, 2), round(sklearn_s, 1), higher_is_better=False,
               note=f"baseline: sklearn per resample, timed over {args.intervals_sklearn_resamples}")
    report.add("peak memory the intervals allocate (MB)", round(peak_mb), note="numpy arrays, traced (tracemalloc)")
    return report
