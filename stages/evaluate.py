"""Stages evaluate_base and evaluate: score a model on the held-out test papers through every lens.

`--model base` scores params.model.base into data/eval/base (a separate DVC stage, so a finetune
change never re-encodes with the base model). `--model finetuned` scores models/finetuned into
data/eval/finetuned, then writes the side-by-side report: metrics/evaluate.json {base, finetuned,
delta}, metrics/evaluate.md, the learning-curve and confusion CSVs, PNGs under metrics/plots, and
logs them to the finetune run in MLflow.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from arxiv_embed import paths
from arxiv_embed.evaluation.lenses import (
    ModelEval,
    delta,
    evaluate_model,
    flatten_metrics,
    load_eval_data,
    plot_confusion,
    plot_learning_curve,
    plot_map,
    report_markdown,
)
from arxiv_embed.files import atomic_path, read_json, write_json, write_text
from arxiv_embed.models import load_model
from arxiv_embed.params import Params, load_params
from arxiv_embed.errors import run

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

REPORT = paths.METRICS_DIR / "evaluate.md"
LEARNING_CURVE = paths.METRICS_DIR / "learning_curve.csv"
CONFUSION = paths.METRICS_DIR / "confusion.csv"


def load(which: str, params: Params) -> SentenceTransformer:
    backend = params.evaluate.backend
    if which == "base":
        return load_model(params.model.base, params.model.max_seq_length, params.model.trust_remote_code, backend=backend)
    # The fine-tuned folder carries the max_seq_length it was trained with.
    return load_model(paths.FINETUNED, trust_remote_code=params.model.trust_remote_code, backend=backend)


def write_report(base: ModelEval, finetuned: ModelEval, summary: dict[str, int]) -> dict:
    report = {"base": base.metrics, "finetuned": finetuned.metrics, "delta": delta(finetuned.metrics, base.metrics)}
    write_json(paths.metrics_file("evaluate"), report)
    write_text(REPORT, report_markdown(report, summary))
    # Wide (one column per model) so `dvc plots` draws one line per model from one file.
    curves = base.learning_curve.rename({"macro_f1": "base"}).join(
        finetuned.learning_curve.rename({"macro_f1": "finetuned"}), on="train_per_label", how="full", coalesce=True
    ).sort("train_per_label")
    with atomic_path(LEARNING_CURVE) as tmp:
        curves.write_csv(tmp)
    with atomic_path(CONFUSION) as tmp:
        finetuned.predictions.write_csv(tmp)
    with atomic_path(paths.PLOTS_DIR) as tmp:
        tmp.mkdir()
        plot_learning_curve(curves, tmp / "learning_curve.png")
        plot_confusion(finetuned.predictions, tmp / "confusion_matrix.png", "Fine-tuned model: test-paper labels (row-normalised)")
        plot_map(base.coordinates, tmp / "embeddings_base.png", "Base model: test abstracts")
        plot_map(finetuned.coordinates, tmp / "embeddings_finetuned.png", "Fine-tuned model: test abstracts")
    return report


def log_to_mlflow(report: dict) -> None:
    """Log into the finetune run (models/finetuned/mlflow_run.json), or a new run linked to it.

    Warns instead of failing when the tracking store is unreachable: the metrics files are already
    written and are DVC's record; failing here would make `dvc repro` redo the whole evaluation
    only to log it. The warning says what was not logged.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from arxiv_embed.tracking import TrackingUnavailableError, configure_tracking, metric_key, run_tags, tracked_run

    run_info = paths.FINETUNED / "mlflow_run.json"
    finetune_run = read_json(run_info).get("run_id") if run_info.exists() else None
    try:
        configure_tracking()
        with tracked_run(finetune_run, run_name="evaluate") as run_id:
            if run_id != finetune_run:
                mlflow.set_tags({**run_tags(paths.SPLIT_DIR, paths.TRIPLETS_DIR), "finetune_run_id": str(finetune_run)})
            flat = {f"eval.{side}.{name}": value for side in report for name, value in flatten_metrics(report[side]).items()}
            mlflow.log_metrics({metric_key(name): value for name, value in flat.items()})
            for artifact in (paths.metrics_file("evaluate"), REPORT, LEARNING_CURVE):
                mlflow.log_artifact(str(artifact), artifact_path="evaluate")
            mlflow.log_artifacts(str(paths.PLOTS_DIR), artifact_path="evaluate/plots")
        print(f"logged to MLflow run {run_id}" + ("" if run_id == finetune_run else f" (finetune run {finetune_run} not found)"))
    except (TrackingUnavailableError, MlflowException, OSError) as exc:
        print(f"WARNING: metrics not logged to MLflow ({exc}); metrics/evaluate.json is written. "
              "Start the tracking server and rerun `dvc repro -s -f evaluate` to log them.", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["base", "finetuned"], required=True)
    which = parser.parse_args(argv).model

    params = load_params()
    data = load_eval_data(params.evaluate.max_train_papers, params.shared.seed)
    print(f"evaluate {which} ({params.evaluate.backend} backend): "
          + ", ".join(f"{count} {name}" for name, count in data.summary().items()))
    result = evaluate_model(load(which, params), data, params.evaluate, params.shared.seed)
    result.save(paths.eval_dir(which))
    print("\n".join(f"{name}: {value:.4f}" for name, value in flatten_metrics(result.metrics).items()))
    if which == "base":
        return

    report = write_report(ModelEval.load(paths.eval_dir("base")), result, data.summary())
    print(REPORT.read_text(encoding="utf-8"))
    log_to_mlflow(report)


if __name__ == "__main__":
    run(main, "evaluate")
