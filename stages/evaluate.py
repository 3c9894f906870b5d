"""Stages evaluate_base and evaluate: score a model on the held-out test papers through every lens.

`--model base` scores params.model.base's vectors from embed_base into data/eval/base (a separate
DVC stage, so a finetune change never re-encodes with the base model). `--model finetuned` applies
the adapter to those cached vectors in finetune.mode=adapter (nothing is encoded), and encodes with
the fine-tuned model in mode=full. `--model finetuned` scores models/finetuned into
data/eval/finetuned, then writes the side-by-side report: metrics/evaluate.json {base, finetuned,
delta, delta_ci95}, metrics/evaluate.md, the learning-curve and confusion CSVs, PNGs under
metrics/plots, and logs them to the finetune run in MLflow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from arxiv_embed import paths
from arxiv_embed.errors import UserError, run
from arxiv_embed.evaluation.data import EvalData, load_eval_data
from arxiv_embed.evaluation.headline import SCORED_WEIGHTS, headline
from arxiv_embed.embeddings import (TextVectors, adapter_modules, apply_adapter, chunk_folder, distinct_texts, embed_texts,
                                    encode_precision, encoder_key)
from arxiv_embed.evaluation.lenses import PLOTS, evaluate_vectors
from arxiv_embed.evaluation.report import ModelEval, compare, read_scope, report_markdown
from arxiv_embed.files import atomic_path, write_json, write_text
from arxiv_embed.flat import flatten
from arxiv_embed.models import load_model, weights_sha256
from arxiv_embed.schema.base import load
from arxiv_embed.schema.evaluate import EvaluateParams
from arxiv_embed.tracking import finetune_run_id

MODEL_NAMES = {"base": "Base", "finetuned": "Fine-tuned"}  # in plot titles


@contextmanager
def vectors_to_score(which: str, params: EvaluateParams, data: EvalData) -> Iterator[tuple[TextVectors, TextVectors | None]]:
    """The scored model's vectors of every text the lenses read: cached base ones (with the adapter
    applied, in adapter mode), or the fine-tuned model's own encoding (mode=full, in resumable chunks kept
    until the block ends without an error); and, when the model has a query adapter of its own
    (finetune.adapter.query_adapter), the test titles through it."""
    texts = data.texts()
    if which == "base" or params.finetune.mode == "adapter":
        base = TextVectors.load_subset(paths.BASE_EMBEDDINGS, texts)
        if which == "base":
            yield base, None
            return
        # The fine-tuned folder is the base model + the adapter: only the adapter runs, on cached vectors.
        model = load_model(paths.FINETUNED, trust_remote_code=params.model.trust_remote_code, device="cpu")
        try:
            documents, queries = adapter_modules(model), adapter_modules(model, "query")
        except ValueError:
            raise UserError(f"{paths.FINETUNED} has no adapter (finetune.mode=full saved it) but finetune.mode is adapter: "
                            "rerun `dvc repro finetune`, or set finetune.mode back to full") from None
        titles = base.subset(distinct_texts([data.test["title"]]))
        yield apply_adapter(documents, base), (apply_adapter(queries, titles) if queries != documents else None)
        return
    backend = params.embed_base.backend  # the base's vectors' backend: both models scored alike
    model = load_model(paths.FINETUNED, trust_remote_code=params.model.trust_remote_code, backend=backend)
    # Its files (weights and config), precision, libraries and code name its chunks: a new model never reads old
    # ones, and a resume on another device or after an upgrade starts afresh instead of splicing two precisions.
    key = encoder_key(paths.FINETUNED, model.max_seq_length, backend, encode_precision(model))
    # In the project's root: a killed `--temp` or queued evaluate resumes there after DVC deleted its workspace.
    with chunk_folder(paths.kept_between_runs(paths.EVALUATE_WORK), key, texts, what="evaluate") as work_dir:
        yield embed_texts(model, texts, work_dir, key, params.evaluate.batch_size, what="evaluate"), None


def write_report_files(base: ModelEval, finetuned: ModelEval, report: dict, summary: dict[str, int], note: str = "") -> None:
    """metrics/evaluate.json and .md, and every lens's declared plots (lenses.PLOTS): CSVs and PNGs."""
    write_json(paths.EVALUATE_REPORT, report)
    write_text(paths.EVALUATE_MARKDOWN, report_markdown(report, summary, note))
    evals = {"base": base, "finetuned": finetuned}
    with atomic_path(paths.PLOTS_DIR) as tmp:
        tmp.mkdir()
        for plot in PLOTS:
            for model, table in plot.tables({name: e.tables for name, e in evals.items()}):
                plot.draw(table, tmp / plot.png.format(model=model), plot.title.format(model=MODEL_NAMES.get(model, model)))
                if plot.csv is not None:
                    with atomic_path(plot.csv) as csv:
                        table.write_csv(csv)


def log_to_mlflow(report: dict, params: EvaluateParams, finetune_run: str | None) -> None:
    """Log the evaluation (metrics, evaluate.* params, report and plots) into `finetune_run`, that of the model
    scored (finetune_run_id), when it holds no evaluation yet: training and evaluation side by side in
    one run, as `dvc repro` and a sweep that retrains produce them (a retrain that gives the same weights is not
    evaluated again: DVC sees the same model, whose evaluation stays in the run that first trained it; finetune tags
    the new run with that run's id, tracking.tag_weights). A model
    evaluated again (a sweep of evaluate.* alone, `dvc repro -f -s evaluate`) logs into a new run nested under it
    instead: another experiment's evaluation must not replace the numbers of the run it was first evaluated in. Runs
    are written by id, never reopened, so the finetune run keeps its status and end time.

    Warns instead of failing when the tracking store is unreachable: the metrics files are already
    written and are DVC's record; failing here would make `dvc repro` redo the whole evaluation
    only to log it. The warning says what was not logged.
    """
    import os
    import socket
    import time

    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    from arxiv_embed.tracking import (EXPERIMENT, TrackingUnavailableError, close_dead_process_runs, configure_tracking,
                                      metric_key, run_tags)

    created = None
    try:
        configure_tracking()
        client = mlflow.MlflowClient()
        try:
            existing = client.get_run(finetune_run).data.metrics if finetune_run else None
        except MlflowException:  # a run id this store does not know (another store, a deleted run)
            existing = None
        first = existing is not None and not any(name.startswith("eval.") for name in existing)
        run_id = finetune_run if first else None
        if run_id is None:
            close_dead_process_runs("evaluate")  # a run an earlier evaluate made and was killed -9 in
            tags = {**run_tags(paths.SPLIT_DIR, paths.TRIPLETS_DIR), "stage": "evaluate", "finetune_run_id": str(finetune_run),
                    "host": socket.gethostname(), "pid": str(os.getpid())}
            if existing is not None:
                tags["mlflow.parentRunId"] = finetune_run  # shown under the finetune run in the MLflow UI
            created = run_id = client.create_run(mlflow.get_experiment_by_name(EXPERIMENT).experiment_id, run_name="evaluate",
                                                 tags=tags).info.run_id
        flat = {f"eval.{side}.{name}": value for side in ("base", "finetuned", "delta") for name, value in flatten(report[side]).items()}
        flat |= {f"eval.delta_ci95_{end}.{name}": bounds[i] for name, bounds in report["delta_ci95"].items() for i, end in enumerate(("low", "high"))}
        now = int(time.time() * 1000)
        evaluated_with = flatten({"evaluate": params.evaluate.model_dump()})
        client.log_batch(run_id, metrics=[Metric(metric_key(name), value, now, 0) for name, value in flat.items()],
                         params=[Param(name, str(value)) for name, value in evaluated_with.items()])
        for artifact in (paths.EVALUATE_REPORT, paths.EVALUATE_MARKDOWN, paths.LEARNING_CURVE):
            client.log_artifact(run_id, str(artifact), artifact_path="evaluate")
        client.log_artifacts(run_id, str(paths.PLOTS_DIR), artifact_path="evaluate/plots")
        if created:
            client.set_terminated(created, status="FINISHED")
        where = ("" if first else f" (finetune run {finetune_run} holds an earlier evaluation)" if existing is not None
                 else f" (finetune run {finetune_run} not found)" if finetune_run
                 else f" ({paths.FINETUNE_RUNTIME}, which names finetune's run, is missing)")
        print(f"logged to MLflow run {run_id}{where}")
    except BaseException as exc:
        if created:  # the run made here never stays RUNNING: KILLED on Ctrl-C or SIGTERM (errors.run), else FAILED
            try:
                mlflow.MlflowClient().set_terminated(created, status="FAILED" if isinstance(exc, Exception) else "KILLED")
            except Exception:  # noqa: BLE001 (what stopped the logging is what the user must see)
                pass
        if not isinstance(exc, (TrackingUnavailableError, MlflowException, OSError)):
            raise
        print(f"WARNING: metrics not logged to MLflow ({exc}); metrics/evaluate.json is written. "
              "Start the tracking server and rerun `dvc repro -s -f evaluate` to log them.", file=sys.stderr)


def which_model(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["base", "finetuned"], required=True)
    return parser.parse_args(argv).model


def main(argv: list[str] | None = None) -> None:
    which = which_model(argv)

    # 1. Params and the held-out data.
    params = load(EvaluateParams)
    data = load_eval_data(params.evaluate.max_test_papers, params.evaluate.max_train_papers, params.shared.seed)
    print(f"evaluate {which}: " + ", ".join(f"{count} {name}" for name, count in data.summary().items()), flush=True)
    # What the scores depend on besides the model: the base's must match, or the deltas compare different things.
    scope = {"shared.seed": params.shared.seed, **{f"evaluate.{key}": value for key, value in params.evaluate.model_dump().items()
                                                   if key != "batch_size"}, "items_sha256": data.fingerprint()}
    if which == "finetuned" and (base_scope := read_scope(paths.eval_dir("base"))) != scope:
        differ = sorted(key for key in scope.keys() | base_scope.keys() if scope.get(key) != base_scope.get(key))
        what = "by an older version, which saved no scope" if not base_scope else f"with other {', '.join(differ)} than this evaluation's"
        raise UserError(f"{paths.eval_dir('base')} was scored {what}: run `dvc repro evaluate` (it reruns evaluate_base first)")

    # 2. This model through every lens; saved for the other stage (base) or the report (fine-tuned).
    with vectors_to_score(which, params, data) as (vectors, queries):
        result = evaluate_vectors(vectors, data, params.evaluate, params.shared.seed, queries)
        result.save(paths.eval_dir(which), scope)
    print("\n".join(f"{name}: {value:.4f}" for name, value in flatten(result.metrics).items()))
    if which == "base":
        return

    # 3. Base vs fine-tuned on the same items, with paired intervals; then MLflow.
    base = ModelEval.load(paths.eval_dir("base"))
    report = compare(base, result, params.shared.seed)
    # The weights scored, not the MLflow run: push checks them against models/finetuned, and a rerun that trains the same
    # weights writes the same file (so `dvc metrics diff` finds the committed run's in DVC's cache after a `make repro`).
    scored = {SCORED_WEIGHTS: weights_sha256(paths.FINETUNED)}
    write_report_files(base, result, {**report, **scored}, data.summary(), data.describe_sample())
    write_json(paths.HEADLINE, headline(report))
    print(paths.EVALUATE_MARKDOWN.read_text(encoding="utf-8"))
    log_to_mlflow(report, params, finetune_run_id())


if __name__ == "__main__":
    run(main, "evaluate_base" if which_model() == "base" else "evaluate", takes_arguments=True)  # named as in dvc.yaml
