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


def forget_evaluation_preparation(st_trainer) -> None:  # noqa: ANN001 (a SentenceTransformerTrainer)
    """Undo what `st_trainer.evaluate()` before `train()` leaves: transformers prepares the model for evaluation only,
    and accelerate marks it prepared, so train() never wrapped it in DistributedDataParallel. Under torchrun each
    process then trained its own copy on its own shard, gradients never averaged (and a resumed run, which loads rank
    0's weights everywhere, went another way than the uninterrupted one)."""
    model = st_trainer.model
    if world_size() > 1 and getattr(model, "_is_accelerate_prepared", False):
        model._is_accelerate_prepared = False
        st_trainer.accelerator._models = [m for m in st_trainer.accelerator._models if m is not model]


def ranks_in_step():  # noqa: ANN201 (a transformers TrainerCallback)
    """A TrainerCallback that fails the run at a checkpoint whose weights differ between processes: DDP averages every
    gradient, so the ranks' parameters must stay bit-identical (a check against the case forget_evaluation_preparation
    mends, or any other that leaves a process out of the all-reduce)."""
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class RanksInStep(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN202 (transformers' signature)
            if model is None or not (dist.is_available() and dist.is_initialized()):
                return
            total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
            totals = [torch.zeros_like(total) for _ in range(dist.get_world_size())]
            dist.all_gather(totals, total)
            if len({float(t) for t in totals}) > 1:
                raise TrainingSetupError(
                    f"the {len(totals)} processes' weights differ at step {state.global_step} (sums "
                    f"{', '.join(f'{float(t):.6f}' for t in totals)}): DDP did not average their gradients; report it")

    return RanksInStep()
