"""finetune: train an adapter on cached vectors (mode adapter, the default) or every weight (mode full, the trainer).

Reads the finetune.train_data kinds (data/triplets/train_*.parquet; kind `labels`: data/triplets/train_papers.parquet)
and data/triplets/eval_triplets.parquet. finetune.mode=adapter freezes the encoder and trains a small
adapter on embeddings computed once (no checkpoints: it trains in seconds). Writes
models/finetuned/ (mode full: the best checkpoint's model; training_summary.json), metrics/finetune.json,
metrics/finetune_loss.csv and metrics/runtime/finetune.json (its MLflow run and wall times). Every run is an MLflow run.
Mode full's checkpoints go to
models/checkpoints/<run key>/ in the project's own root (also from a `dvc exp run --temp` or queued
workspace), so a rerun with the same params, data and code resumes where an interrupted one stopped.
finetune.full.nproc_per_node > 1 re-runs this module under torchrun (DDP); only rank 0 writes files and talks to MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from arxiv_embed import paths
from arxiv_embed.training import adapter, checkpoints, distributed, mining, recipe, trainer
from arxiv_embed.training import data as training_data
from arxiv_embed.embeddings import TextVectors, distinct_texts
from arxiv_embed.files import atomic_path, write_json, write_text
from arxiv_embed.models import load_model, pick_device, pick_precision, save_model, weights_sha256
from arxiv_embed.flat import flatten
from arxiv_embed.schema.base import load
from arxiv_embed.schema.finetune import TRAINED_WITH, FinetuneParams, trained_with
from arxiv_embed.progress import trainer_callback
from arxiv_embed.tracking import (MLFLOW_RUN_ID, RUN_INFO, SAME_WEIGHTS_TAG, TrackingUnavailableError, close_dead_process_runs,
                                  configure_tracking, run_tags, tag_weights, tracked_run)
from arxiv_embed.errors import TrainingSetupError, run

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# metrics/finetune.json: what the training made, one shape for both modes; a key a mode has no value for is null.
SUMMARY_KEYS = ("mode", "global_step", "epochs", "train_samples", "loss", "cached_texts", "world_size", "effective_batch_size",
                "best_metric", "best_checkpoint_step", "mined_triplets", "mined_without_negative", "mined_negative_mean_rank")
# metrics/runtime/finetune.json: how this run went (paths.runtime_file), with its MLflow run: kept out of the model and
# the summary above, so that a retrain of the same weights hashes as the run it repeats.
RUNTIME_KEYS = ("wall_time_s", "train_seconds", "vectors_seconds", "samples_per_second", "resumed_from_step")


def main() -> None:
    started = time.monotonic()
    # 1. Params; several processes asked for -> run this module under torchrun instead.
    params = load(FinetuneParams)
    ft = params.finetune
    if ft.mode == "adapter":
        return adapter_main(params, started)
    if (nproc := distributed.requested_processes(ft)) > 1 and distributed.world_size() == 1:
        sys.exit(distributed.relaunch_with_torchrun(nproc))
    main_process = distributed.is_main_process()

    # 2. Tracking before anything expensive: a down MLflow server fails here, in seconds.
    if main_process:
        print(f"finetune: MLflow tracking at {configure_tracking()}", flush=True)

    # 3. The checkpoint folder of this exact params+data combination, in the project's root, held by this run alone
    #    (rank 0 holds it for all ranks): a second finetune in this workspace fails here, naming the holder's PID; a
    #    queued point with the same params and data keeps its checkpoints in its own workspace instead.
    train_files, eval_files = training_data.data_files(ft)
    # The base vectors mining reads (their fingerprint, embed_base's output; a project without it fails at the vectors).
    mined_from = [paths.BASE_TRAIN_FINGERPRINT] if ft.hard_negatives.weight and paths.BASE_TRAIN_FINGERPRINT.exists() else []
    run_key = checkpoints.run_key(params, train_files + eval_files + mined_from)
    with checkpoints.claimed(run_key) if main_process else nullcontext(checkpoints.run_folder(run_key)) as run_dir:
        train(params, run_key, run_dir, train_files, started)
        if main_process:
            shutil.rmtree(run_dir, ignore_errors=True)  # finished: resume is the checkpoints' only use


def train(params: FinetuneParams, run_key: str, run_dir: Path, train_files: list[Path], started: float) -> None:
    import mlflow
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import TrainOutput

    ft = params.finetune
    main_process = distributed.is_main_process()
    resume_from = checkpoints.last_checkpoint(run_dir)
    # Killed after the final save: training is done, only the saving below is left.
    finished = checkpoints.finished_state(resume_from)
    if main_process:
        checkpoints.prune_checkpoint_runs(run_dir)

    # 4. Model and loss (under DDP each rank loads on the CPU; the trainer moves it to its device).
    device = pick_device()
    model = load_model(
        params.model.base, params.model.max_seq_length, params.model.trust_remote_code,
        device="cpu" if distributed.world_size() > 1 else None,
    )
    # Mined before training from the base model's cached vectors (under DDP every rank mines the same).
    mined = mining.mine_train_split(TextVectors.load(paths.BASE_EMBEDDINGS), ft.hard_negatives.candidates) if ft.hard_negatives.weight else None
    if mined is not None and main_process:
        print(f"finetune: {mined.describe()}", flush=True)
    objectives = recipe.objectives(model, ft, mined=mined.triplets if mined is not None else None)
    train_dataset, loss = recipe.trainer_inputs(objectives, ft, distributed.world_size())

    # 5. Training arguments.
    precision = pick_precision(ft.full.precision, device)
    args = trainer.training_arguments(params, run_dir, precision, device, disable_tqdm=True)  # progress: one line per ~15 s
    if main_process:
        print(f"finetune: {device} x{distributed.world_size()}, {precision}", flush=True)

    # 6. Evaluator (triplet accuracy, title->abstract retrieval) and callbacks.
    evaluator = trainer.build_evaluator(ft, ft.batch_size)

    def resumed(step: int) -> None:  # called once the trainer has really loaded the checkpoint
        if main_process:
            print(f"finetune: resumed from step {step} ({resume_from})", flush=True)
            mlflow.set_tag("resumed_from_step", step)

    probe = trainer.resume_probe(resumed)
    callbacks = [probe, trainer_callback("finetune: trained"), *([distributed.ranks_in_step()] if distributed.world_size() > 1 else [])]
    if (prototypes := trainer.prototype_checkpoints(loss)) is not None:
        callbacks.append(prototypes)  # supcon's label prototypes: saved with each checkpoint, loaded on resume
    if ft.full.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=ft.full.early_stopping_patience))
    st_trainer = trainer.quiet(SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator, callbacks=callbacks
    ))
    st_trainer.add_callback(trainer.card_log_checkpoints())  # after the library's model-card callback, which fills the table

    # 7. Train inside an MLflow run that always ends (FINISHED, KILLED on Ctrl-C/SIGTERM, FAILED).
    #    A resumed attempt continues its run and logs only the steps it did not log before.
    #    mode and pid, as adapter runs carry them: a run of other params killed -9 is closed by the next finetune.
    tags = {**run_tags(*train_files), "stage": "finetune", "mode": "full", "run_key": run_key, "host": socket.gethostname(),
            "device": device, "precision": precision, "pid": str(os.getpid())}
    run = tracked_run(checkpoints.saved_run_id(run_dir) if resume_from else None, run_key, tags) if main_process else nullcontext()
    written = [False]  # models/finetuned and the metrics: from then on an MLflow failure is only a warning
    with ending_warns(run, run_key, written) as run_id:
        if main_process:
            close_dead_process_runs("finetune", keep=run_id)  # attempts killed -9, of these params or others, either mode
            logged = mlflow.get_run(run_id).data.params  # a continued run keeps its first values
            mlflow.log_params({k: v for k, v in flatten(recorded(params)).items() if k not in logged})
            write_json(run_dir / RUN_INFO, {"run_id": run_id})
        st_trainer.add_callback(trainer.mlflow_callback(trainer.logged_steps(run_id) if main_process and resume_from else None))
        # Step 0: the base model's scores, and proof that metric_for_best_model is a real key.
        baseline = st_trainer.evaluate()
        distributed.forget_evaluation_preparation(st_trainer)  # else train() under torchrun is no DDP at all
        if main_process:
            best_key = trainer.check_metric(ft.full.metric_for_best_model, baseline)
        if finished:
            st_trainer.state = finished
            if finished.best_model_checkpoint:
                st_trainer._load_best_model()  # what train() ends with (load_best_model_at_end)
            else:  # no evaluation chose a best one: the last checkpoint's weights, not the base model's
                st_trainer._load_from_checkpoint(str(resume_from))
            trainer.card_of_a_finished_run(st_trainer, resume_from)
            resumed(finished.global_step)
            result, start_step = TrainOutput(finished.global_step, 0.0, {"train_runtime": 0.0}), finished.global_step
        else:
            result = st_trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            start_step = probe.start_step
            if result.global_step == 0:  # the trainer made no batch: the base model would ship as the trained one
                raise TrainingSetupError(f"finetune trained 0 steps (finetune.batch_size={ft.batch_size}, "
                                         f"{distributed.world_size()} processes): lower the batch size or train on more rows")

        # 8. Save (rank 0): the best model, its summary and loss curve; then log the model.
        if not main_process:
            print(f"finetune: rank {distributed.rank()} of {distributed.world_size()} ran {probe.steps_run} steps", flush=True)
            return
        state = st_trainer.state
        curve = checkpoints.loss_curve(state.log_history)
        best_step, best_metric = checkpoints.best_checkpoint(state, best_key)  # the checkpoint loaded: the model saved
        samples_per_step = ft.batch_size * ft.full.gradient_accumulation_steps * distributed.world_size()
        runtime = result.metrics["train_runtime"]
        summary = {
            "mode": "full",
            "global_step": result.global_step,
            "epochs": round(state.epoch or 0.0, 4),
            "train_samples": training_data.dataset_size(train_dataset),
            "world_size": distributed.world_size(),
            "effective_batch_size": samples_per_step,
            "resumed_from_step": start_step,
            "samples_per_second": round((result.global_step - start_step) * samples_per_step / runtime, 3) if runtime else 0.0,
            "train_seconds": round(runtime, 1),
            "wall_time_s": round(time.monotonic() - started, 1),
            "best_metric": best_metric,
            "best_checkpoint_step": best_step,
            "loss": round(sum(loss for _, loss in curve) / len(curve), 6) if curve else None,
            **(mined.summary() if mined is not None else {}),
        }
        save_outputs(model, run_id, summary, curve, params)
        written[0] = True
        how = log_outputs(model, run_id, summary)
    print(
        f"finetune: {summary['global_step']} steps ({summary['epochs']} epochs, {probe.steps_run} run now), "
        f"{summary['samples_per_second']} samples/s, {summary['wall_time_s']} s wall; best {ft.full.metric_for_best_model}="
        f"{summary['best_metric']} at step {summary['best_checkpoint_step']}; model logged to MLflow as {how}",
        flush=True,
    )


def adapter_main(params: FinetuneParams, started: float) -> None:
    """finetune.mode=adapter (training/adapter.py): the adapter trains on embed_base's cached base vectors."""
    ft = params.finetune
    print(f"finetune: MLflow tracking at {configure_tracking()}", flush=True)
    import mlflow

    train_files, _ = training_data.data_files(ft)
    frames = {kind: training_data.kind_frame(kind) for kind in training_data.train_kinds(ft)}
    model = load_model(params.model.base, params.model.max_seq_length, params.model.trust_remote_code)
    tags = {**run_tags(*train_files), "stage": "finetune", "mode": "adapter", "device": str(model.device),
            "host": socket.gethostname(), "pid": str(os.getpid())}
    written = [False]
    with ending_warns(tracked_run(None, "finetune-adapter", tags), "finetune-adapter", written) as run_id:
        close_dead_process_runs("finetune", keep=run_id)  # earlier attempts killed -9 (either mode) never ended theirs
        mlflow.log_params(flatten(recorded(params)))
        load_started = time.monotonic()
        base = TextVectors.load(paths.BASE_EMBEDDINGS)
        columns = [frame[column] for frame in frames.values() for column in adapter.text_columns(frame)]
        mined = None
        if ft.hard_negatives.weight:
            mined = mining.mine_train_split(base, ft.hard_negatives.candidates)
            columns += [mined.triplets[column] for column in mining.MINED_COLUMNS]
            print(f"finetune: {mined.describe()}", flush=True)
        cached = base.subset(distinct_texts(columns))  # in memory: only the texts this training reads
        load_seconds = time.monotonic() - load_started
        objectives = recipe.objectives(None, ft, frames, mined.triplets if mined is not None else None)
        result = adapter.train_members(ft, params.shared.seed, objectives, cached.index, cached.vectors)
        for step, value in result.curve[:: max(1, ft.logging_steps)]:
            mlflow.log_metric("loss", value, step=step, synchronous=False)
        tuned = adapter.attach(model, result.modules, result.query_modules)
        samples = sum(o.data.height for o in objectives)
        summary = {
            "mode": "adapter", "global_step": result.steps, "epochs": ft.adapter.epochs, "train_samples": samples,
            "cached_texts": len(cached), "vectors_seconds": round(load_seconds, 1), "train_seconds": round(result.train_seconds, 1),
            # Each step: one batch of the main objective and one of every other objective, in every member.
            "samples_per_second": round(result.steps * ft.adapter.members * ft.batch_size * len(objectives) / result.train_seconds, 3)
            if result.train_seconds else 0.0,
            "wall_time_s": round(time.monotonic() - started, 1), "world_size": 1, "effective_batch_size": ft.batch_size,
            "loss": round(sum(v for _, v in result.curve[-50:]) / len(result.curve[-50:]), 6) if result.curve else None,
            **(mined.summary() if mined is not None else {}),
        }
        save_outputs(tuned, run_id, summary, result.curve, params)
        written[0] = True
        how = log_outputs(tuned, run_id, summary)
    print(f"finetune (adapter {ft.adapter.kind}): {len(cached)} cached texts (nothing encoded; read and mined in {summary['vectors_seconds']} s), "
          f"{result.steps} adapter steps{f' x {ft.adapter.members} members' if ft.adapter.members > 1 else ''} in {summary['train_seconds']} s, "
          f"{summary['wall_time_s']} s wall; "
          f"model logged to MLflow as {how}", flush=True)


def recorded(params: FinetuneParams) -> dict:
    """The params this run read (the other mode's knobs left out), as MLflow records them."""
    return {**params.model_dump(), "finetune": params.finetune.read_by_mode()}


def save_outputs(model: SentenceTransformer, run_id: str, summary: dict, curve: list[tuple[int, float]],
                 params: FinetuneParams) -> None:
    """models/finetuned (the model, its summary), metrics/finetune.json, the loss curve and the run's runtime record (its
    MLflow run, wall times, the digest of the knobs that trained it), each atomically. No MLflow call: a tracking
    server gone down during training cannot keep them unwritten."""
    if unknown := set(summary) - set(SUMMARY_KEYS) - set(RUNTIME_KEYS):
        raise ValueError(f"finetune summary keys {sorted(unknown)} are in neither SUMMARY_KEYS nor RUNTIME_KEYS (one shape for both modes)")
    made = {key: summary.get(key) for key in SUMMARY_KEYS}

    # The record names the run of the model beside it: gone first, so that a kill between the two swaps leaves the new
    # model with no record (evaluate logs it apart, push asks for finetune again), never with the last run's.
    paths.FINETUNE_RUNTIME.unlink(missing_ok=True)
    # sentence-transformers' card (mode=full) states how long training took: a wall time, the runtime record's; left out
    # of the model folder so that its hash depends on the inputs alone.
    if getattr(model, "model_card_data", None) is not None:
        model.model_card_data._training_start_time = None
    with atomic_path(paths.FINETUNED) as tmp:
        save_model(model, tmp)
        (tmp / paths.TRAINING_SUMMARY).write_text(json.dumps(made, indent=2) + "\n")
    write_json(paths.FINETUNE_RUNTIME, {MLFLOW_RUN_ID: run_id, **{key: summary.get(key) for key in RUNTIME_KEYS},
                                        TRAINED_WITH: trained_with(params.shared.seed, params.model, params.finetune)})
    write_json(paths.metrics_file("finetune"), made)
    write_text(paths.FINETUNE_LOSS, "step,loss\n" + "".join(f"{s},{v}\n" for s, v in curve))


def log_outputs(model: SentenceTransformer, run_id: str, summary: dict) -> str:
    """The summary (final_* metrics) and the model to the MLflow run, after save_outputs. Warns instead of failing
    when the tracking store does not answer (as evaluate does): the outputs are written and are DVC's record.
    Returns how the model was logged."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        configure_tracking()  # a server that went down answers nothing within seconds: no minutes of retries below
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        weights = weights_sha256(paths.FINETUNED)
        if weights and (earlier := tag_weights(run_id, weights)):
            earlier_run, evaluated = earlier
            print(f"finetune: the same weights as MLflow run {earlier_run} (tag {SAME_WEIGHTS_TAG}), " + (
                "which holds their evaluation: unless evaluate's params or code changed too, DVC does not evaluate them again"
                if evaluated else "which trained them first and holds no evaluation of them: evaluate logs one into this run"),
                flush=True)
        return trainer.log_model(model, paths.FINETUNED)
    except (TrackingUnavailableError, MlflowException, OSError) as exc:
        give_up_on_tracking()
        print(f"finetune: WARNING: the final metrics and the model were not logged to MLflow run {run_id} ({exc}); "
              f"{paths.FINETUNED} and {paths.metrics_file('finetune')} are written.", file=sys.stderr, flush=True)
        return "nothing (MLflow failed)"


def give_up_on_tracking() -> None:
    """The tracking store failed: MLflow calls still to come (ending the run) fail at once instead of retrying for minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"


@contextmanager
def ending_warns(run: AbstractContextManager, what: str, written: list[bool]) -> Iterator[str | None]:
    """`run` (tracking.tracked_run, or nullcontext on other ranks), whose end -- ending the MLflow run -- only warns
    when it fails once the outputs are written (written[0]): a stage whose model is saved must not fail on MLflow.
    The run stays RUNNING; the next finetune closes it (tracking.close_dead_process_runs)."""
    from mlflow.exceptions import MlflowException

    run_id = None
    try:
        with run as run_id:
            yield run_id
    except (TrackingUnavailableError, MlflowException, OSError) as exc:
        if not written[0]:
            raise
        give_up_on_tracking()
        print(f"finetune: WARNING: MLflow run {run_id} ({what}) could not be ended ({exc}); it stays RUNNING until the "
              f"next finetune closes it. The outputs are written.", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        run(main, "finetune")
    finally:
        distributed.end_distributed()
