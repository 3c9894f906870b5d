"""A throw-away copy of the project (git + DVC) to run the real DAG in: for tests, benchmarks and
the fault-injection script, which must never touch the user's own workspace."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from arxiv_embed.params import Params

ROOT = Path(__file__).resolve().parents[1]
# What a project copy needs to run the DAG: code, pipeline, params, DVC's config and the default data.
PROJECT_FILES = ("stages", "arxiv_embed", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore", "data/sample")


def deep_update(base: dict, overrides: dict) -> dict:
    """Merge `overrides` into `base` (nested sections merged key by key); returns `base`."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def stage_env(project: Path) -> dict[str, str]:
    """Environment for stages run by DVC: this interpreter's venv first, nothing online, the copy's
    own code first on the import path (never an editable install of another checkout)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", PYTHONPATH=str(project))
    for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT"):
        env.pop(name, None)  # the copy's own store and no experiment, whatever ran this
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout_s: float | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd` with stage_env until it exits; on failure raise with the tail of its output.

    Its output goes to files, not pipes: a daemon it leaves behind keeps them open (`dvc queue start`'s workers hold
    its stdout until the queue is done), and a pipe's reader would wait for that daemon too. The command runs in a
    session of its own: when it outlives `timeout_s`, or the wait is interrupted (Ctrl-C, pytest-timeout), every
    process of that session (the stages under `dvc repro`) is killed with it, so none is left loading the CPU."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(cmd, cwd=cwd, env=kwargs.pop("env", stage_env(cwd)), stdout=stdout, stderr=stderr,
                                   text=True, start_new_session=True, **kwargs)
        timed_out = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # timed out, or interrupted (that exception goes on): the command goes, and all it started
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        stdout.seek(0)
        stderr.seek(0)
        result = subprocess.CompletedProcess(cmd, process.returncode, stdout.read(), stderr.read())
    if timed_out or (check and result.returncode != 0):
        how = f"still ran after {timeout_s:.0f} s, killed" if timed_out else f"failed ({result.returncode})"
        raise AssertionError(f"{' '.join(cmd)} {how}:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def make_project(dest: Path, params: dict | None = None) -> Path:
    """A git+DVC repo at `dest` holding this project's code and params (with `params` merged in)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    merged = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), params or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "project copy"], dest)
    return dest


def dvc(project: Path, *args: str, check: bool = True, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run this venv's `dvc` in `project` (`run`)."""
    return run([str(Path(sys.executable).parent / "dvc"), *args], project, check=check, timeout_s=timeout_s)


def ran_stages(result: subprocess.CompletedProcess) -> list[str]:
    """Stage names `dvc repro` actually ran, from its output."""
    return [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]


def params_with(overrides: dict | None = None, root: Path = ROOT) -> Params:
    """The committed params.yaml with `overrides` merged in, validated (for tests and benchmarks)."""
    from arxiv_embed.params import parse_params

    raw = yaml.safe_load((root / "params.yaml").read_text())
    return parse_params(deep_update(raw, overrides or {}))
