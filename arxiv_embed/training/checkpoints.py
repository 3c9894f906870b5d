"""Checkpoints for resume: one folder per run key under models/checkpoints/, held by one finetune at a time."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from arxiv_embed import paths
from arxiv_embed.errors import UserError
from arxiv_embed.run_folders import PROBE_RETRY_S, open_locked, prune_stopped, try_lock
from arxiv_embed.schema.finetune import FinetuneParams
from arxiv_embed.tracking import RUN_INFO, file_fingerprint
from arxiv_embed.training.distributed import world_size

if TYPE_CHECKING:
    from transformers import TrainerState

OTHER_CHECKPOINT_RUNS_KEPT = 2  # checkpoint folders of other params kept, so flipping a param back still resumes
LOCK = "finetune.lock"  # in the run folder: flock()ed by the finetune using it, holds its PID


class RunFolderBusy(UserError):
    """Another finetune holds this checkpoint folder."""


def run_key(params: FinetuneParams, files: list[Path]) -> str:
    """Hash of everything that shapes the training trajectory: model+finetune params, the base model's files (a folder
    or package retrained in place keeps its name), seed, world size, the data files' contents, and the code that trains
    (the package, the stage, the training libraries' versions: DVC reruns finetune on a code change, and a resumed
    checkpoint of the old code would ship weights the new code did not make). Same key -> the checkpoints can be
    resumed; any change -> a fresh start."""
    from arxiv_embed.models import files_sha256, resolve_model

    payload = {
        "model": params.model.model_dump(),
        "base_files_sha256": files_sha256(resolve_model(params.model.base)),
        "finetune": params.finetune.read_by_mode(),
        "seed": params.shared.seed,
        "world_size": world_size(),
        "data": file_fingerprint(*files),
        "code": code_sha256(),
        "libraries": {name: _version(name) for name in TRAINING_LIBRARIES},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


TRAINING_LIBRARIES = ("torch", "transformers", "sentence-transformers", "accelerate")


def code_sha256() -> str:
    """sha256 over the package's Python files and the finetune stage's (more than the stage imports: a needless fresh
    start after an unrelated edit costs less than resuming another code's weights)."""
    package = Path(__file__).resolve().parents[1]
    stage = package.parent / "stages" / "finetune.py"
    # Files only: an editor's lock file (Emacs's .#name.py) is a dangling link.
    sources = sorted(p for p in package.rglob("*.py") if p.is_file()) + ([stage] if stage.exists() else [])
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.relative_to(package.parent).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` exclusively (an flock on its LOCK file, released when the process ends, even
    by kill -9). A second finetune on the same folder fails at once, naming the holder's PID."""
    handle, got = open_locked(run_dir, LOCK, lambda handle: try_lock(handle, fcntl.LOCK_EX, PROBE_RETRY_S))
    try:
        if not got:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunFolderBusy(
                f"{run_dir} is in use by another finetune (PID {holder}, {LOCK}) with the same params and data; "
                f"wait for it to end, or stop it (kill {holder}) and rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def run_folder(run_key: str) -> Path:
    """The checkpoint folder of `run_key` in the project's own root (paths.kept_between_runs): a sweep point killed in
    a `dvc exp run --temp` or queued workspace, which DVC deletes, resumes there when run again."""
    return paths.kept_between_runs(paths.CHECKPOINTS) / run_key


@contextmanager
def claimed(run_key: str) -> Iterator[Path]:
    """run_folder(run_key), held by this finetune (`locked`). Another queued point with the same params and data may
    hold it: a single-process run then keeps its checkpoints in its own workspace's folder (resumable while that exists)
    instead of failing; a second run in the same workspace, or under torchrun (every rank must use one folder), fails
    at once naming the holder, as `locked` does."""
    shared, own = run_folder(run_key), (Path.cwd() / paths.CHECKPOINTS / run_key).resolve()
    stack = ExitStack()
    try:
        stack.enter_context(locked(shared))
        run_dir = shared
    except RunFolderBusy as busy:
        if own == shared.resolve() or world_size() > 1:
            raise
        print(f"finetune: {busy.args[0].split('; ')[0]}; this run keeps its checkpoints in {own}, resumable only while "
              "this workspace exists", flush=True)
        stack.enter_context(locked(own))
        run_dir = own
    with stack:
        yield run_dir


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: trainer_state.json is written last, so a kill mid-save is skipped, and so is a
    state file cut short (transformers writes it in place: a kill or crash mid-write leaves it empty or partial)."""
    if not run_dir.is_dir():
        return None
    saved = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return next((p for p in sorted(saved, key=lambda p: int(p.name.split("-")[-1]), reverse=True) if _complete(p)), None)


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, cut short
        return False
    return True


def finished_state(checkpoint: Path | None) -> TrainerState | None:
    """The trainer state of `checkpoint` when it is the run's last step (killed after the final save):
    max_steps reached, or the trainer had decided to stop there (early stopping).

    Resuming from it would train past the stop (the trainer's loop takes a step before it checks
    the limit, and early stopping only looks again at the next evaluation), so finetune takes the
    state as is instead.
    """
    if checkpoint is None:
        return None
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    return state if (state.max_steps and state.global_step >= state.max_steps) or stopped(state) else None


def stopped(state: TrainerState) -> bool:
    """Whether the TrainerControl saved with `state` says training should stop (what EarlyStoppingCallback sets)."""
    control = (state.stateful_callbacks or {}).get("TrainerControl") or {}
    if isinstance(control, list):  # transformers keeps a list when several instances of one class saved state
        control = control[-1] if control else {}
    return bool(control.get("args", {}).get("should_training_stop"))


def best_checkpoint(state: TrainerState, metric: str) -> tuple[int | None, float | None]:
    """(step, `metric` there) of the checkpoint the trainer loaded as the best model (load_best_model_at_end): the
    model finetune saves. state.best_global_step can name an evaluation that saved no checkpoint, which the trainer
    cannot load (the schema's save_steps == eval_steps prevents it). (None, None) when none was loaded: the last
    step's weights are saved."""
    step = Path(state.best_model_checkpoint).name.split("-")[-1] if state.best_model_checkpoint else ""
    if not step.isdigit():
        return None, None
    if int(step) == state.best_global_step:
        return int(step), state.best_metric
    scores = [entry[metric] for entry in state.log_history if entry.get("step") == int(step) and metric in entry]
    return int(step), scores[-1] if scores else None


def prune_checkpoint_runs(keep: Path, others: int = OTHER_CHECKPOINT_RUNS_KEPT) -> None:
    """Delete checkpoint folders of other params, except those in use and the `others` most recent of the rest:
    the folder is the project's (queued points share it), and running points, whose saves keep their folders newest,
    must not push a stopped point's checkpoints out before it is run again."""
    prune_stopped(keep.parent, LOCK, others, keep)


def saved_run_id(run_dir: Path) -> str | None:
    """The MLflow run an interrupted attempt of this run key logged into (continued on resume)."""
    info = run_dir / RUN_INFO
    return json.loads(info.read_text())["run_id"] if info.exists() else None


def loss_curve(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) for every training log entry (a resumed run's history includes the earlier steps)."""
    return [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
