"""Training wiring for finetune (and benchmarks/train_throughput): data, loss + batch sampler,
evaluators, training arguments, the MLflow callback, checkpoints for resume, and torchrun.

finetune.py reads as the straight line of steps; the choices behind each step live here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from stages.lib import paths
from stages.lib.params import Finetune, Params
from stages.lib.tracking import file_fingerprint, metric_key

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.evaluation import BaseEvaluator
    from torch import nn
    from transformers import TrainerCallback

log = logging.getLogger(__name__)

# The text columns of each make_triplets kind, in the order the losses read them
# (anchor, positive[, negative]); the id/label columns stay out of the batches.
TEXT_COLUMNS = {
    "triplets": ("anchor", "positive", "negative"),
    "title_abstract": ("anchor", "positive"),
    "same_label": ("anchor", "positive"),
}
TRIPLET_EVALUATOR = "triplet"  # -> eval_triplet_cosine_accuracy
RETRIEVAL_EVALUATOR = "title_abstract"  # -> eval_title_abstract_cosine_ndcg@10, ...
OTHER_CHECKPOINT_RUNS_KEPT = 2  # checkpoint folders of other params kept, so flipping a param back still resumes
NPROC_ENV = "FINETUNE_NPROC_PER_NODE"  # overrides finetune.nproc_per_node (e.g. on a bigger machine)


class TrainingSetupError(ValueError):
    """The finetune params, the data or the model do not fit together."""


# ---------------------------------------------------------------------------- params and data


def check_combination(finetune: Finetune) -> None:
    """Reject loss/data/batch combinations the library would fail on later (or silently mis-train)."""
    if len(set(finetune.train_data)) != len(finetune.train_data):
        raise TrainingSetupError(f"finetune.train_data={finetune.train_data} lists a kind twice")
    if finetune.loss == "triplet" and finetune.train_data != ["triplets"]:
        raise TrainingSetupError(
            f"finetune.loss=triplet needs (anchor, positive, negative) rows, but finetune.train_data="
            f"{finetune.train_data} has pair kinds: set finetune.train_data to [triplets], or use loss mnrl/cached_mnrl for pairs"
        )
    if finetune.loss == "batch_hard" and (finetune.batch_size < 4 or finetune.batch_size % 2):
        raise TrainingSetupError(
            f"finetune.loss=batch_hard groups 2 papers per label in a batch: finetune.batch_size must be even and >= 4 (got {finetune.batch_size})"
        )
    if finetune.loss == "cached_mnrl" and finetune.mini_batch_size > finetune.batch_size:
        raise TrainingSetupError(
            f"finetune.mini_batch_size={finetune.mini_batch_size} > finetune.batch_size={finetune.batch_size}: "
            "cached_mnrl splits each batch into mini-batches, so the mini-batch must be smaller"
        )


def data_files(finetune: Finetune) -> tuple[list[Path], list[Path]]:
    """(training files, evaluation files) this configuration reads."""
    if finetune.loss == "batch_hard":
        train = [paths.split_file("train")]
    else:
        train = [paths.training_file("train", kind) for kind in finetune.train_data]
    evaluation = [paths.training_file("eval", "triplets")]
    if finetune.eval_retrieval:
        evaluation.append(paths.training_file("eval", "title_abstract"))
    return train, evaluation


def read_texts(path: Path, columns: tuple[str, ...] | list[str]) -> pl.DataFrame:
    """The named columns of a parquet file, refusing missing files/columns and empty or null texts."""
    if not path.exists():
        raise TrainingSetupError(f"{path} is missing: run `dvc repro make_triplets` (or the stage that writes it) first")
    schema = pl.read_parquet_schema(path)
    if missing := [c for c in columns if c not in schema]:
        raise TrainingSetupError(f"{path} has no column(s) {missing} (it has {list(schema)}): rerun the stage that writes it")
    frame = pl.read_parquet(path, columns=list(columns))
    if frame.height == 0:
        raise TrainingSetupError(f"{path} has no rows: check make_triplets' params (triplets_per_split, same_label_pairs_per_split)")
    text_columns = [c for c in columns if frame.schema[c] == pl.String]
    bad = frame.select(pl.any_horizontal(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "") for c in text_columns).sum()).item()
    if bad:
        raise TrainingSetupError(f"{path}: {bad} of {frame.height} rows have a null or empty text: rerun the stage that writes it")
    return frame


def label_dataset(path: Path) -> Dataset:
    """(text, label) rows for batch-hard losses: each training paper's abstract and its label as an int id."""
    from datasets import Dataset

    frame = read_texts(path, ["abstract", "label"])
    labels = sorted(frame["label"].unique().to_list())
    ids = frame["label"].replace_strict(labels, list(range(len(labels))), return_dtype=pl.Int64)
    return Dataset.from_dict({"text": frame["abstract"].to_list(), "label": ids.to_list()})


def train_dataset(finetune: Finetune) -> Dataset | DatasetDict:
    """The training data for finetune.loss: one Dataset, or a DatasetDict of kinds (multi-dataset
    training: each batch comes from one kind, so pairs and triplets never share a batch)."""
    from datasets import Dataset, DatasetDict

    train_files, _ = data_files(finetune)
    if finetune.loss == "batch_hard":
        return label_dataset(train_files[0])
    sets = {
        kind: Dataset.from_dict(read_texts(path, TEXT_COLUMNS[kind]).to_dict(as_series=False))
        for kind, path in zip(finetune.train_data, train_files)
    }
    return next(iter(sets.values())) if len(sets) == 1 else DatasetDict(sets)


def dataset_size(dataset: Dataset | DatasetDict) -> int:
    return sum(len(d) for d in dataset.values()) if isinstance(dataset, dict) else len(dataset)


# ---------------------------------------------------------------------------- loss and sampler


def build_loss(model: SentenceTransformer, finetune: Finetune) -> nn.Module:
    """The library loss for finetune.loss, wrapped in MatryoshkaLoss when finetune.matryoshka_dims is set."""
    from sentence_transformers.sentence_transformer import losses

    if finetune.loss == "triplet":
        loss = losses.TripletLoss(model)
    elif finetune.loss == "mnrl":
        # Pairs: in-batch negatives; triplets: the third column adds one hard negative per anchor.
        loss = losses.MultipleNegativesRankingLoss(model)
    elif finetune.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=finetune.mini_batch_size)
    else:
        loss = losses.BatchHardTripletLoss(model)
    if finetune.matryoshka_dims:
        dim = model.get_embedding_dimension()
        if dim and (too_big := [d for d in finetune.matryoshka_dims if d > dim]):
            raise TrainingSetupError(f"finetune.matryoshka_dims {too_big} exceed the model's embedding dimension {dim}")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(set(finetune.matryoshka_dims), reverse=True))
    return loss


def batch_sampler(finetune: Finetune) -> str:
    """In-batch-negative losses must not see a text twice in a batch (it would be its own negative);
    batch-hard losses need several papers of several labels in every batch."""
    from sentence_transformers.base.sampler import BatchSamplers

    return {
        "mnrl": BatchSamplers.NO_DUPLICATES,
        "cached_mnrl": BatchSamplers.NO_DUPLICATES,
        "batch_hard": BatchSamplers.GROUP_BY_LABEL,
        "triplet": BatchSamplers.BATCH_SAMPLER,
    }[finetune.loss]


# ---------------------------------------------------------------------------- evaluation


def build_evaluator(finetune: Finetune, batch_size: int) -> BaseEvaluator:
    """Eval-split triplet accuracy (cosine), plus title->abstract retrieval when finetune.eval_retrieval."""
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
        SequentialEvaluator,
        TripletEvaluator,
    )

    _, eval_files = data_files(finetune)
    triplets = read_texts(eval_files[0], TEXT_COLUMNS["triplets"])
    evaluators = [
        TripletEvaluator(
            triplets["anchor"].to_list(), triplets["positive"].to_list(), triplets["negative"].to_list(),
            name=TRIPLET_EVALUATOR, similarity_fn_names=["cosine"], batch_size=batch_size, write_csv=False,
        )
    ]
    if finetune.eval_retrieval:
        pairs = read_texts(eval_files[1], ["id", "anchor", "positive"])
        evaluators.append(
            InformationRetrievalEvaluator(
                queries=dict(zip(pairs["id"], pairs["anchor"])),
                corpus=dict(zip(pairs["id"], pairs["positive"])),
                relevant_docs={paper: {paper} for paper in pairs["id"]},
                name=RETRIEVAL_EVALUATOR, batch_size=batch_size, write_csv=False,
            )
        )
    return SequentialEvaluator(evaluators)


def check_metric(metric: str, metrics: dict[str, float]) -> str:
    """finetune.metric_for_best_model must be a key the evaluation produced (with or without `eval_`)."""
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    if key not in metrics:
        choices = ", ".join(sorted(k for k in metrics if k not in {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch"}))
        raise TrainingSetupError(f"finetune.metric_for_best_model={metric!r} is not a metric the evaluators produce; choose one of: {choices}")
    return key


# ---------------------------------------------------------------------------- arguments


def training_arguments(params: Params, output_dir: Path, precision: str, device: str, **overrides: object):
    """SentenceTransformerTrainingArguments from params (overrides: for benchmarks and tests)."""
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    ft = params.finetune
    distributed = world_size() > 1
    settings: dict[str, object] = dict(
        output_dir=str(output_dir),
        num_train_epochs=ft.epochs,
        max_steps=ft.max_steps,
        per_device_train_batch_size=ft.batch_size,
        per_device_eval_batch_size=ft.batch_size,
        gradient_accumulation_steps=ft.gradient_accumulation_steps,
        learning_rate=ft.learning_rate,
        warmup_steps=ft.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=ft.lr_scheduler,
        weight_decay=ft.weight_decay,
        batch_sampler=batch_sampler(ft),
        multi_dataset_batch_sampler=ft.multi_dataset_sampler,
        eval_strategy="steps",
        eval_steps=ft.eval_steps,
        save_strategy="steps",
        save_steps=ft.save_steps,
        save_total_limit=ft.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=ft.metric_for_best_model,
        logging_steps=ft.logging_steps,
        seed=params.shared.seed,
        data_seed=params.shared.seed,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        # We log to MLflow ourselves (MlflowCallback below): transformers' integration would dump
        # ~150 TrainingArguments as params and end the run itself, before the model is logged.
        report_to="none",
        # Worker processes only compete with the compute threads on a CPU; a GPU waits on tokenising.
        dataloader_num_workers=0 if device == "cpu" else min(4, (os.cpu_count() or 2) // 2),
        dataloader_persistent_workers=device != "cpu",
        dataloader_pin_memory=device == "cuda",
        # use_cpu: without it accelerate never sets up multi-process (gloo) training on a CPU-only host.
        use_cpu=device == "cpu",
        ddp_backend=("nccl" if device == "cuda" else "gloo") if distributed else None,
        run_name=output_dir.name,
    )
    settings.update(overrides)
    return SentenceTransformerTrainingArguments(**settings)


# ---------------------------------------------------------------------------- MLflow


def mlflow_callback() -> TrainerCallback:
    """A TrainerCallback logging every trainer log (loss, learning_rate, grad_norm, eval_*) to the
    active MLflow run at the trainer's global step, from the main process only."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (transformers' signature)
            if not state.is_world_process_zero or not logs:
                return
            metrics = {metric_key(k): float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            # Asynchronous: a remote tracking server's latency must not slow every training step.
            mlflow.log_metrics(metrics, step=state.global_step, synchronous=False)

    return MlflowCallback()


def log_model(model: SentenceTransformer, model_dir: Path) -> str:
    """Log the model with the sentence_transformers flavor; fall back to model_dir's files as artifacts."""
    import mlflow
    import mlflow.sentence_transformers

    try:
        # Explicit requirements: MLflow's inference re-imports the model in a subprocess (~20 s).
        mlflow.sentence_transformers.log_model(model, name="model", pip_requirements=_requirements())
        return "mlflow.sentence_transformers"
    except Exception as exc:  # noqa: BLE001 (any flavor failure: keep the model as files instead)
        log.warning("mlflow.sentence_transformers.log_model failed (%s): logging the folder as artifacts", exc)
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        return "artifacts"


def _requirements() -> list[str]:
    from importlib.metadata import version

    # Local version labels (torch's "+cpu") are not installable from PyPI.
    return [f"{name}=={version(name).split('+')[0]}" for name in ("sentence-transformers", "transformers", "torch")]


# ---------------------------------------------------------------------------- checkpoints and resume


def run_key(params: Params, files: list[Path]) -> str:
    """Hash of everything that shapes the training trajectory: model+finetune params, seed, world
    size and the data. Same key -> the checkpoints can be resumed; any change -> a fresh start."""
    payload = {
        "model": params.model.model_dump(),
        "finetune": params.finetune.model_dump(),
        "seed": params.shared.seed,
        "world_size": world_size(),
        "data": file_fingerprint(*files),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last, so a kill mid-save is skipped)."""
    if not run_dir.is_dir():
        return None
    done = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prune_checkpoint_runs(keep: Path, others: int = OTHER_CHECKPOINT_RUNS_KEPT) -> None:
    """Delete checkpoint folders of other params, except the `others` most recent."""
    if not keep.parent.is_dir():
        return
    runs = sorted((p for p in keep.parent.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in runs[others:]:
        shutil.rmtree(stale, ignore_errors=True)


def saved_run_id(run_dir: Path) -> str | None:
    """The MLflow run an interrupted attempt of this run key logged into (continued on resume)."""
    info = run_dir / "mlflow_run.json"
    return json.loads(info.read_text())["run_id"] if info.exists() else None


def loss_curve(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) for every training log entry (a resumed run's history includes the earlier steps)."""
    return [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]


# ---------------------------------------------------------------------------- processes and signals


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def end_distributed() -> None:
    """Tear down the process group the trainer started (NCCL warns of leaked resources otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 (torchrun sets RANK); the only process that writes outputs and talks to MLflow."""
    return int(os.environ.get("RANK", "0")) == 0


def requested_processes(finetune: Finetune) -> int:
    return int(os.environ.get(NPROC_ENV) or finetune.nproc_per_node)


def raise_on_sigterm() -> None:
    """SIGTERM (kill, DVC/CI cancelling, torchrun stopping workers) -> KeyboardInterrupt, so the
    cleanup paths run (MLflow run ended KILLED) as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def check_process_count(nproc: int) -> None:
    """On a GPU machine each DDP process needs a GPU of its own: fail here, not in rank N's CUDA call."""
    import torch

    if torch.cuda.is_available() and nproc > (gpus := torch.cuda.device_count()):
        raise TrainingSetupError(
            f"finetune.nproc_per_node (or {NPROC_ENV}) asks for {nproc} processes but this machine has {gpus} GPU(s): "
            f"set it to at most {gpus}"
        )


def relaunch_with_torchrun(nproc: int, module: str = "stages.finetune") -> int:
    """Run `module` under torchrun with nproc processes (DDP); returns torchrun's exit code."""
    check_process_count(nproc)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module]
    print(f"finetune: starting {nproc} processes: {' '.join(command[1:])}", flush=True)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        return process.wait()
