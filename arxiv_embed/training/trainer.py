"""The trainer's wiring: evaluators, training arguments, the MLflow callback and model logging."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from arxiv_embed.schema.finetune import RETRIEVAL_CUTOFFS, RETRIEVAL_EVALUATOR, TRIPLET_EVALUATOR, Finetune, FinetuneParams
from arxiv_embed.tracking import metric_key
from arxiv_embed.training.data import TEXT_COLUMNS, data_files, read_texts
from arxiv_embed.training.distributed import world_size
from arxiv_embed.errors import TrainingSetupError
from arxiv_embed.training.losses import batch_sampler

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.evaluation import BaseEvaluator
    from torch import nn
    from transformers import Trainer, TrainerCallback

    from arxiv_embed.training.label_losses import SupervisedContrastiveLoss

log = logging.getLogger(__name__)

PROTOTYPES_FILE = "label_prototypes-rank{rank}.pt"  # in each checkpoint folder: one per DDP rank (each rank's batches differ)


def build_evaluator(finetune: Finetune, batch_size: int) -> BaseEvaluator:
    """Eval-split triplet accuracy (cosine), plus title->abstract retrieval when finetune.full.eval_retrieval."""
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
    if finetune.full.eval_retrieval:
        # A seeded sample: the eval split grows with the data, and every evaluation encodes each pair's two texts.
        pairs = read_texts(eval_files[1], ["id", "anchor", "positive"])
        pairs = pairs.sample(min(finetune.full.eval_retrieval_papers, pairs.height), seed=0).sort("id")
        evaluators.append(
            InformationRetrievalEvaluator(
                queries=dict(zip(pairs["id"], pairs["anchor"])),
                corpus=dict(zip(pairs["id"], pairs["positive"])),
                relevant_docs={paper: {paper} for paper in pairs["id"]},
                name=RETRIEVAL_EVALUATOR, batch_size=batch_size, write_csv=False,
                accuracy_at_k=RETRIEVAL_CUTOFFS["accuracy"], precision_recall_at_k=RETRIEVAL_CUTOFFS["precision"],
                mrr_at_k=RETRIEVAL_CUTOFFS["mrr"], ndcg_at_k=RETRIEVAL_CUTOFFS["ndcg"], map_at_k=RETRIEVAL_CUTOFFS["map"],
            )
        )
    return SequentialEvaluator(evaluators)


def check_metric(metric: str, metrics: dict[str, float]) -> str:
    """finetune.full.metric_for_best_model must be a key the evaluation produced (with or without `eval_`)."""
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    if key not in metrics:
        choices = ", ".join(sorted(k for k in metrics if k not in {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch"}))
        raise TrainingSetupError(f"finetune.full.metric_for_best_model={metric!r} is not a metric the evaluators produce; choose one of: {choices}")
    return key


def training_arguments(params: FinetuneParams, output_dir: Path, precision: str, device: str, **overrides: object):
    """SentenceTransformerTrainingArguments from params (overrides: for benchmarks and tests)."""
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    ft, full = params.finetune, params.finetune.full
    distributed = world_size() > 1
    settings: dict[str, object] = dict(
        output_dir=str(output_dir),
        num_train_epochs=full.epochs,
        max_steps=full.max_steps,
        per_device_train_batch_size=ft.batch_size,
        per_device_eval_batch_size=ft.batch_size,
        gradient_accumulation_steps=full.gradient_accumulation_steps,
        learning_rate=full.learning_rate,
        warmup_steps=full.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=full.lr_scheduler,
        weight_decay=full.weight_decay,
        batch_sampler=batch_sampler(ft),
        multi_dataset_batch_sampler=full.multi_dataset_sampler,
        eval_strategy="steps",
        eval_steps=full.eval_steps,
        save_strategy="steps",
        save_steps=full.save_steps,
        save_total_limit=full.save_total_limit,
        # Early stopping's patience count is saved in each checkpoint; without this a resumed run starts it at 0 and
        # trains past where the uninterrupted run stopped.
        restore_callback_states_from_checkpoint=True,
        load_best_model_at_end=True,
        metric_for_best_model=full.metric_for_best_model,
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


def mlflow_callback(logged_through: dict[str, int] | None = None) -> TrainerCallback:
    """A TrainerCallback logging every trainer log (loss, learning_rate, grad_norm, eval_*) to the
    active MLflow run at the trainer's global step, from the main process only.

    `logged_through` (metric -> last step an interrupted attempt of this run logged, see
    `logged_steps`): those steps are not logged again, so a resumed run's history has each step once.
    """
    import mlflow
    from transformers import TrainerCallback

    done = dict(logged_through or {})

    class MlflowCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (transformers' signature)
            if not state.is_world_process_zero or not logs:
                return
            metrics = {metric_key(k): float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            # Each key once a step: transformers adds `epoch` to the step's, the evaluation's and the final summary's logs.
            metrics = {k: v for k, v in metrics.items() if state.global_step > done.get(k, -1)}
            if metrics:
                # Asynchronous: a remote tracking server's latency must not slow every training step.
                mlflow.log_metrics(metrics, step=state.global_step, synchronous=False)
                done.update(dict.fromkeys(metrics, state.global_step))

    return MlflowCallback()


def logged_steps(run_id: str) -> dict[str, int]:
    """Metric -> the last step `run_id` logged it at (what an interrupted attempt already logged)."""
    import mlflow

    client = mlflow.MlflowClient()
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in client.get_run(run_id).data.metrics}


def resume_probe(on_resume: Callable[[int], None]) -> TrainerCallback:
    """A TrainerCallback that records the step training really starts from (`.start_step`, read
    from the trainer's state once it has loaded any checkpoint; `on_resume(step)` is called when
    > 0) and how many optimizer steps this process ran (`.steps_run`)."""
    from transformers import TrainerCallback

    class ResumeProbe(TrainerCallback):
        start_step = 0
        steps_run = 0

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signature)
            self.start_step = state.global_step
            if self.start_step:
                on_resume(self.start_step)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.steps_run += 1

    return ResumeProbe()


def quiet(st_trainer: Trainer) -> Trainer:
    """Remove transformers' PrinterCallback, which disable_tqdm=True puts in the progress bar's place: it prints
    every log as a dict line (on every rank); progress.trainer_callback and the MLflow callback report instead."""
    from transformers.trainer_callback import PrinterCallback

    st_trainer.remove_callback(PrinterCallback)
    return st_trainer


def prototype_losses(loss: nn.Module | dict[str, nn.Module]) -> list[SupervisedContrastiveLoss]:
    """The supcon losses with a prototype head inside the trainer's loss (a dict of them, MatryoshkaLoss and weights
    unwrapped), each once (train_data kinds share one loss), in a fixed order: the same params find them alike."""
    from arxiv_embed.training.label_losses import SupervisedContrastiveLoss

    found: list[SupervisedContrastiveLoss] = []
    for top in loss.values() if isinstance(loss, dict) else [loss]:
        for module in top.modules():
            if isinstance(module, SupervisedContrastiveLoss) and module.prototype_weight and all(module is not f for f in found):
                found.append(module)
    return found


def prototype_checkpoints(loss: nn.Module | dict[str, nn.Module]) -> TrainerCallback | None:
    """A TrainerCallback that saves the label prototypes of `loss` (moving averages the trainer does not know of)
    into every checkpoint and loads them back when training resumes from one, so that a resumed run equals the
    uninterrupted one; None when `loss` keeps no prototypes."""
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    heads = prototype_losses(loss)
    if not heads:
        return None

    def path(args, step: int) -> Path:  # noqa: ANN001 (TrainingArguments)
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}" / PROTOTYPES_FILE.format(rank=args.process_index)

    def save(args, step: int) -> None:  # noqa: ANN001
        target = path(args, step)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        torch.save([head.prototype_state() for head in heads], tmp)
        os.replace(tmp, target)  # never half a file under the final name

    class PrototypeCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' signature)
            # Before the trainer writes the checkpoint (DefaultFlowCallback, first in line, has set should_save), so
            # a checkpoint whose trainer_state.json exists -- the mark of a complete one -- holds the prototypes too.
            if control.should_save:
                save(args, state.global_step)

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            if not path(args, state.global_step).exists():  # a save on_step_end did not announce
                save(args, state.global_step)

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            if not state.global_step:
                return
            saved = path(args, state.global_step)  # finetune resumes from output_dir's checkpoint-<step>
            if not saved.exists():
                log.warning("%s is missing (a checkpoint of an older version): the label prototypes start empty, "
                            "so this resumed run will not equal an uninterrupted one", saved)
                return
            for head, head_state in zip(heads, torch.load(saved, weights_only=True), strict=True):
                head.load_prototype_state(head_state)

    return PrototypeCheckpoints()


CARD_LOGS_FILE = "card_training_logs.json"  # in each checkpoint folder (rank 0's)


def card_log_checkpoints() -> TrainerCallback:
    """A TrainerCallback that saves the model card's training-log table (sentence-transformers fills it from the logs
    and evaluations this process saw) into every checkpoint, and puts it back when training resumes from one: a
    resumed run's card lists every step, as the uninterrupted run's does (else models/finetuned/README.md, and so the
    output's DVC hash, would differ). Add it after the trainer is made, so that it runs after the card's own callback."""
    from transformers import TrainerCallback

    class CardLogCheckpoints(TrainerCallback):
        def _save(self, args, state, control, model) -> None:  # noqa: ANN001 (transformers' objects)
            # Rewritten at each event of a step that saves: the step's log and evaluation come before its checkpoint,
            # and the checkpoint's trainer_state.json (the mark of a complete one) after the last of them.
            if control.should_save and state.is_world_process_zero and model is not None:
                target = checkpoint_folder(args, state.global_step) / CARD_LOGS_FILE
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps(model.model_card_data.training_logs) + "\n", encoding="utf-8")
                os.replace(tmp, target)

        def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 (transformers' signature)
            self._save(args, state, control, model)

        def on_log(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            self._save(args, state, control, model)

        def on_evaluate(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            self._save(args, state, control, model)

        def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            if state.global_step and model is not None:
                restore_card_logs(model, checkpoint_folder(args, state.global_step))

    return CardLogCheckpoints()


def checkpoint_folder(args, step: int) -> Path:  # noqa: ANN001 (TrainingArguments)
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def card_of_a_finished_run(st_trainer: Trainer, checkpoint: Path) -> None:
    """The model card of a run killed after its last checkpoint, which finetune saves without training: the training
    logs as that checkpoint saved them, and the hyperparameters the library's card callback records when training
    begins (train() is not called). Its card then equals the uninterrupted run's."""
    for callback in st_trainer.callback_handler.callbacks:
        if type(callback).__name__.endswith("ModelCardCallback"):  # sentence-transformers' (its module moves between versions)
            callback.on_train_begin(st_trainer.args, st_trainer.state, st_trainer.control, model=st_trainer.model)
    restore_card_logs(st_trainer.model, checkpoint)


def restore_card_logs(model: SentenceTransformer, checkpoint: Path) -> None:
    """The card's training-log table as it was when `checkpoint` was saved (card_log_checkpoints)."""
    saved = checkpoint / CARD_LOGS_FILE
    if not saved.exists():  # a checkpoint of an older version, or a kill between the checkpoint and this file
        log.warning("%s is missing: the model card's training logs will list only the steps after %s", saved, checkpoint.name)
        return
    model.model_card_data.training_logs = json.loads(saved.read_text(encoding="utf-8"))


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
