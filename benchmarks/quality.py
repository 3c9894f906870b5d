"""quality: base vs fine-tuned on held-out papers of each dev file, with paired-bootstrap 95% intervals.

For each file, every record (or a seeded subsample of --quality-papers records) runs the real DAG in a
throw-away project up to `evaluate` (download, clean, split, make_triplets, embed_base, finetune,
evaluate_base, evaluate; the two dev files' encoding takes ~14 min on 2 idle cores, once per kept project),
once per candidate (--quality-candidates; `default` = params.yaml as committed). Candidates share
the project, so only finetune and evaluate rerun. The numbers are evaluate's own
(metrics/evaluate.json: delta and delta_ci95, the paired bootstrap over the same test queries,
triplets and papers): category-retrieval NDCG@10, macro-F1 over labels with at least
evaluate.min_label_support test papers, triplet accuracy (random / hard negatives), title->abstract
NDCG@10; plus finetune's wall time (metrics/runtime/finetune.json).

    python -m benchmarks quality                                   # default params, both whole dev files
    python -m benchmarks quality --quality-workdir benchmarks/results/dev   # the projects objectives.py reuses
    python -m benchmarks quality --quality-candidates default adapter-linear full-batch-all-retain
    python -m benchmarks quality --quality-files my.jsonl.gz       # any arXiv JSON-lines (Kaggle schema)
    python -m benchmarks quality --quality-workdir .quality         # keep the projects: a later run with
                                                                   # another candidate skips evaluate_base
    python -m benchmarks quality --quality-candidates gpu-profile   # on a GPU machine (the GPU profile)

Without ../shared/data (a user's clone), pass --quality-files with one or more local arXiv
JSON-lines files (.jsonl or .jsonl.gz, Kaggle snapshot schema), e.g. the sample shipped in the
repository: `--quality-files data/sample/arxiv-sample.jsonl.gz` (4,830 records, 18 archives), a
file you would give `download.source=file`, or the download stage's output data/raw/arxiv.jsonl.gz.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from arxiv_embed.flat import flatten
from tests.harness import ROOT, deep_update, dvc, make_project
from benchmarks.common import Report, load_note
from benchmarks.gpu_profile import GPU_PROFILE

SHARED = ROOT.parent / "shared" / "data"
DEV_FILES = [SHARED / "arxiv-multidomain-sample.jsonl.gz", SHARED / "arxiv-recent-sample.jsonl.gz"]
# Targets of issue 21 for the default params (delta, on each file); title->abstract: at most this much below base.
TARGETS = {"category_retrieval.ndcg@10": 0.035, "classification.macro_f1_supported": 0.02, "triplet.accuracy_random": 0.04,
           "triplet.accuracy_hard": 0.04, "title_to_abstract.ndcg@10": -0.005}
# Candidates: name -> params overrides (merged into params.yaml). `default` is params.yaml itself.
CANDIDATES: dict[str, dict] = {
    "default": {},
    # Issue 11's default objective (BatchAll + mined triplets), against issue 21's supcon default.
    "adapter-batch-all": {"finetune": {"loss": "batch_all", "batch_size": 32, "prototype_weight": 0.0,
                                       "hard_negatives": {"weight": 1.0}, "adapter": {"retain_distill": 2.5}}},
    "adapter-linear": {"finetune": {"adapter": {"kind": "linear"}}},
    "adapter-no-retain": {"finetune": {"retain_title_abstract": 0.0}},
    "adapter-no-hard-negatives": {"finetune": {"hard_negatives": {"weight": 0.0}}},
    "adapter-semi-hard": {"finetune": {"loss": "batch_semi_hard"}},
    "adapter-cosent": {"finetune": {"loss": "cosent", "train_data": ["graded_pairs"]}},
    # The trainer's path: the pre-issue-11 default, and the label-aware loss with title->abstract pairs.
    "full-mnrl-same-label": {"finetune": {"mode": "full", "loss": "mnrl", "train_data": ["same_label"],
                                          "retain_title_abstract": 0.0}},
    "full-batch-all-retain": {"finetune": {"mode": "full", "loss": "batch_all", "train_data": ["labels"],
                                           "full": {"learning_rate": 2.0e-5}}},
    # The GPU profile (benchmarks/gpu_profile.py): full fine-tuning at batch 128; minutes on a CPU, seconds on a GPU.
    "gpu-profile": GPU_PROFILE,
    # The BatchAll profile cut to one epoch at lr 1e-4: most of its gain on a GPU; 27 min on 2 shared cores (benchmarks/README.md).
    "full-1-epoch": deep_update(copy.deepcopy(GPU_PROFILE), {"finetune": {"loss": "batch_all", "full": {"epochs": 1, "learning_rate": 1.0e-4}}}),
}
QUICK = {"quality_papers": 1500}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quality-files", nargs="+", type=Path, default=None,
                        help="quality: arXiv JSON-lines files (default: the two dev files in ../shared/data)")
    parser.add_argument("--quality-papers", type=int, default=0,
                        help="quality: seeded subsample of this many records of each file (default 0: every record, in a seeded order)")
    parser.add_argument("--quality-candidates", nargs="+", default=["default"], choices=list(CANDIDATES),
                        help="quality: configurations to compare (default: default)")
    parser.add_argument("--quality-workdir", type=Path, default=None,
                        help="quality: keep each file's project in this folder and reuse it on the next run (DVC then reruns "
                             "only what changed: a new candidate retrains, evaluate_base is not repeated); default: a temporary folder")


def subsample(source: Path, n: int, dest: Path, seed: int = 42) -> Path:
    """A seeded random n-record subsample, 0 = every record (files sorted by id would otherwise give their oldest papers)."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    random.Random(seed).shuffle(lines)
    with gzip.open(dest, "wt", encoding="utf-8") as f:
        f.writelines(lines[:n] if n else lines)
    return dest


def headline(evaluation: dict) -> dict[str, tuple[float, float, float, float, float]]:
    """metric -> (base, fine-tuned, delta, 95% low, 95% high) from metrics/evaluate.json."""
    base, tuned, change = (flatten(evaluation[side]) for side in ("base", "finetuned", "delta"))
    return {key: (base[key], tuned[key], change[key], *evaluation["delta_ci95"][key]) for key in TARGETS if key in change}


def verdict(key: str, change: float, low: float) -> bool:
    """A gain target is met when the delta reaches it and its interval is above zero; title->abstract
    when the delta is no more than the allowed loss below base."""
    target = TARGETS[key]
    return change >= target and low > 0 if target > 0 else change >= target


def kept_folder(keep: Path, source: Path, papers: int) -> Path:
    """keep/<file>-<papers> (created once, reused by later runs)."""
    folder = keep.resolve() / f"{source.name.split('.')[0]}-{papers or 'all'}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def kept_workdir(keep: Path | None, source: Path, papers: int) -> Iterator[Path]:
    """A temporary folder, or the kept one."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
            yield Path(tmp)
        return
    yield kept_folder(keep, source, papers)


def refresh_code(project: Path) -> None:
    """A kept project gets this checkout's code and pipeline, so DVC reruns the stages whose code changed."""
    for name in ("stages", "arxiv_embed", "dvc.yaml"):
        source, target = ROOT / name, project / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)


def dev_project(workdir: Path, source: Path, papers: int) -> Path:
    """workdir/project: the DAG's project over the file's seeded subsample (made once; a kept one gets this checkout's code)."""
    project = workdir / "project"
    if (project / "dvc.yaml").exists():
        refresh_code(project)
    else:
        sample = subsample(source, papers, workdir / "sample.jsonl.gz")
        make_project(project, {"download": {"source": "file", "path": str(sample), "max_records": None}})
    return project


def run(args: argparse.Namespace) -> Report:
    files = args.quality_files or DEV_FILES
    if missing := [str(f) for f in files if not Path(f).exists()]:
        raise SystemExit(f"quality: {', '.join(missing)} not found. Without ../shared/data, pass --quality-files with local "
                         "arXiv JSON-lines files (Kaggle schema, .jsonl or .jsonl.gz), e.g. --quality-files data/sample/arxiv-sample.jsonl.gz")
    report = Report("quality")
    for source in files:
        with kept_workdir(args.quality_workdir, Path(source), args.quality_papers) as workdir:
            project = dev_project(workdir, Path(source), args.quality_papers)
            committed = {**yaml.safe_load((ROOT / "params.yaml").read_text()), "download": yaml.safe_load((project / "params.yaml").read_text())["download"]}
            for name in args.quality_candidates:
                merged = deep_update(copy.deepcopy(committed), CANDIDATES[name])
                (project / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
                dvc(project, "repro", "evaluate")  # evaluate_base runs once per file: its params do not change
                evaluation = json.loads((project / "metrics/evaluate.json").read_text())
                finetune = json.loads((project / "metrics/runtime/finetune.json").read_text())
                label = f"{Path(source).name.split('.')[0]} [{name}]"
                report.add(f"{label} finetune wall time (s)", finetune["wall_time_s"], higher_is_better=False)
                for key, (b, t, d, low, high) in headline(evaluation).items():
                    met = verdict(key, d, low)
                    report.add(f"{label} {key}", round(t, 4), round(b, 4),
                               note=f"delta {d:+.4f} [95% {low:+.4f}, {high:+.4f}]; target {TARGETS[key]:+.3f}: {'met' if met else 'MISSED'}")
    if note := load_note():
        report.notes.append(note)
    report.notes.append("deltas and 95% intervals from evaluate (metrics/evaluate.json delta_ci95: paired bootstrap)")
    return report
