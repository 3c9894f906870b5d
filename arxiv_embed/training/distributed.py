"""Processes: torchrun (DDP) relaunch and ranks. (SIGTERM and parent death: arxiv_embed.errors.run.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from arxiv_embed.schema.finetune import Finetune
from arxiv_embed.errors import TrainingSetupError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def end_distributed() -> None:
    """Tear down the process group the trainer started (NCCL warns of leaked resources otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 (torchrun sets RANK); the only process that writes outputs and talks to MLflow."""
    return int(os.environ.get("RANK", "0")) == 0


def requested_processes(finetune: Finetune) -> int:
    """finetune.full.nproc_per_node alone (`dvc exp run -S finetune.full.nproc_per_node=N`): the process count sets the
    effective batch, so a setting DVC does not see would bring back a cached model trained another way."""
    return finetune.full.nproc_per_node


def check_process_count(nproc: int) -> None:
    """On a GPU machine each DDP process needs a GPU of its own: fail here, not in rank N's CUDA call."""
    import torch

    if torch.cuda.is_available() and nproc > (gpus := torch.cuda.device_count()):
        raise TrainingSetupError(
            f"finetune.full.nproc_per_node asks for {nproc} processes but this machine has {gpus} GPU(s): "
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
        # SIGTERM/Ctrl-C here, or this process's parent (dvc) died: torchrun stops the ranks, whose
        # own SIGTERM handling ends the MLflow run KILLED.
        process.send_signal(signal.SIGTERM)
        process.wait()
        raise
