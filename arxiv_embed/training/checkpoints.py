"""Checkpoints for resume: one folder per run key under models/checkpoints/."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from arxiv_embed.params import Params
from arxiv_embed.tracking import RUN_INFO, file_fingerprint
from arxiv_embed.training.distributed import world_size

OTHER_CHECKPOINT_RUNS_KEPT = 2  # checkpoint folders of other params kept, so flipping a param back still resumes


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
    info = run_dir / RUN_INFO
    return json.loads(info.read_text())["run_id"] if info.exists() else None


def loss_curve(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) for every training log entry (a resumed run's history includes the earlier steps)."""
    return [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
