"""quality: base vs fine-tuned on held-out papers of each dev file, with paired-bootstrap 95% intervals.

For each file: a seeded subsample of --quality-papers records runs the real DAG in a throw-away
project (`dvc repro finetune`: download, clean, split, make_triplets, finetune) once per candidate
(--quality-candidates; `default` = params.yaml as committed). The test papers are then embedded once
per model (the base model once per file) and scored with the project's lenses (arxiv_embed.evaluation):
category-retrieval NDCG@10, macro-F1 over labels with >= MIN_SUPPORT test papers, triplet accuracy
(random / hard negatives), title->abstract NDCG@10; plus finetune's wall time. The evaluate stages
are not run: they would encode the same texts again (minutes on a CPU) for the same numbers.

    python -m benchmarks quality                                   # default params, both dev files
    python -m benchmarks quality --quality-candidates default adapter-linear
    python -m benchmarks quality --quality-files my.jsonl.gz       # any arXiv JSON-lines (Kaggle schema)

Without ../shared/data (a user's clone), pass --quality-files with one or more local arXiv
JSON-lines files (.jsonl or .jsonl.gz, Kaggle snapshot schema): e.g. a `download.source=file`
input you already have, or the output of `python -m stages.download` (data/raw/arxiv.jsonl.gz).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np

from arxiv_embed.workspace import ROOT, dvc, make_project
from benchmarks.common import Report, load_note

SHARED = ROOT.parent / "shared" / "data"
DEV_FILES = [SHARED / "arxiv-multidomain-sample.jsonl.gz", SHARED / "arxiv-recent-sample.jsonl.gz"]
MIN_SUPPORT = 10  # macro-F1 counts labels with at least this many test papers (fewer: one paper swings F1 by 0.1+)
BOOTSTRAP = 1000
# Targets of issue 11 for the default params (delta, on each file); title->abstract: at most this much below base.
TARGETS = {"category_retrieval.ndcg@10": 0.03, "classification.macro_f1": 0.03, "triplet_accuracy_random": 0.05,
           "triplet_accuracy_hard": 0.05, "title_to_abstract.ndcg@10": -0.005}
# Candidates: name -> params overrides (merged into params.yaml). `default` is params.yaml itself.
CANDIDATES: dict[str, dict] = {
    "default": {},
    "adapter-linear": {"finetune": {"adapter": {"kind": "linear"}}},
    "adapter-no-retain": {"finetune": {"retain_title_abstract": 0.0}},
    "adapter-semi-hard": {"finetune": {"loss": "batch_semi_hard"}},
    "adapter-cosent": {"finetune": {"loss": "cosent", "train_data": ["graded_pairs"]}},
    "full-mnrl-same-label": {"finetune": {"mode": "full", "loss": "mnrl", "train_data": ["same_label"], "retain_title_abstract": 0.0}},
    "full-batch-all-retain": {"finetune": {"mode": "full", "loss": "batch_all", "train_data": ["labels"], "learning_rate": 2.0e-5}},
}
QUICK = {"quality_papers": 1500}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quality-files", nargs="+", type=Path, default=None,
                        help="quality: arXiv JSON-lines files (default: the two dev files in ../shared/data)")
    parser.add_argument("--quality-papers", type=int, default=4000, help="quality: seeded subsample of each file (default 4000)")
    parser.add_argument("--quality-candidates", nargs="+", default=["default"], choices=list(CANDIDATES),
                        help="quality: configurations to compare (default: default)")


def subsample(source: Path, n: int, dest: Path, seed: int = 42) -> Path:
    """A seeded random n-record subsample (files sorted by id would otherwise give their oldest papers)."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    random.Random(seed).shuffle(lines)
    with gzip.open(dest, "wt", encoding="utf-8") as f:
        f.writelines(lines[:n])
    return dest


def per_item(embed, data, seed: int) -> dict[str, np.ndarray]:  # noqa: ANN001 (lenses.Embeddings, lenses.EvalData)
    """Each headline metric as per-query / per-triplet values (their mean is the metric), plus the
    classifier's predictions for macro-F1."""
    from arxiv_embed.evaluation import lenses

    abstracts, titles = embed(data.test["abstract"]), embed(data.test["title"])
    labels, papers = data.test["label"].to_numpy(), np.arange(data.test.height)
    out: dict[str, np.ndarray] = {}
    ranked = lenses.search(abstracts, abstracts, 10, exclude_self=True)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = counts[inverse] - 1
    answerable = relevant > 0
    hits = (labels[ranked] == labels[:, None]).astype(np.float64)
    out["category_retrieval.ndcg@10"] = lenses._ndcg(hits[answerable], relevant[answerable], 10)
    hits = (lenses.search(titles, abstracts, 10) == papers[:, None]).astype(np.float64)
    out["title_to_abstract.ndcg@10"] = lenses._ndcg(hits, np.ones(len(papers), dtype=np.int64), 10)
    triplets = data.triplets
    a, p, n = (lenses._normalise(embed(triplets[c])) for c in ("anchor", "positive", "negative"))
    correct = ((a * p).sum(1) > (a * n).sum(1)).astype(np.float64)
    kinds = triplets["negative_type"].to_numpy()
    for kind in ("random", "hard"):
        out[f"triplet_accuracy_{kind}"] = correct[kinds == kind]
    out["predicted"] = lenses.classify(embed(data.train["abstract"]), data.train["label"].to_numpy(), abstracts, seed)
    out["actual"] = labels
    return out


def supported_macro_f1(actual: np.ndarray, predicted: np.ndarray, keep: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(actual, predicted, labels=keep, average="macro", zero_division=0))


def paired_bootstrap(base: dict, tuned: dict, seed: int = 0) -> dict[str, tuple[float, float, float, float, float]]:
    """metric -> (base, fine-tuned, delta, 95% low, 95% high): resampling the same queries/papers for both models."""
    rng = np.random.default_rng(seed)
    result = {}
    for key in TARGETS:
        if key == "classification.macro_f1":
            continue
        b, t = base[key], tuned[key]
        if len(b) == 0:
            continue
        resampled = (t - b)[rng.integers(len(b), size=(BOOTSTRAP, len(b)))].mean(1)
        result[key] = (b.mean(), t.mean(), t.mean() - b.mean(), *np.percentile(resampled, [2.5, 97.5]))
    actual = base["actual"]
    values, counts = np.unique(actual, return_counts=True)
    keep = values[counts >= MIN_SUPPORT]
    b, t = supported_macro_f1(actual, base["predicted"], keep), supported_macro_f1(actual, tuned["predicted"], keep)
    deltas = []
    for _ in range(BOOTSTRAP // 2):  # F1 is not a mean of per-paper values: recompute it on each resample
        i = rng.integers(len(actual), size=len(actual))
        deltas.append(supported_macro_f1(actual[i], tuned["predicted"][i], keep) - supported_macro_f1(actual[i], base["predicted"][i], keep))
    result["classification.macro_f1"] = (b, t, t - b, *np.percentile(deltas, [2.5, 97.5]))
    return result


def _score(project: Path, model_path: str | Path, params, data) -> dict:  # noqa: ANN001
    from arxiv_embed.evaluation import lenses
    from arxiv_embed.models import load_model

    model = load_model(str(model_path), params.model.max_seq_length, params.model.trust_remote_code)
    embed = lenses.embed_texts(model, data.texts(), params.evaluate.batch_size, progress=False)
    return per_item(embed, data, params.shared.seed)


def run(args: argparse.Namespace) -> Report:
    from arxiv_embed.evaluation import lenses
    from arxiv_embed.params import load_params

    files = args.quality_files or DEV_FILES
    if missing := [str(f) for f in files if not Path(f).exists()]:
        raise SystemExit(f"quality: {', '.join(missing)} not found. Without ../shared/data, pass --quality-files with local "
                         "arXiv JSON-lines files (Kaggle schema, .jsonl or .jsonl.gz), e.g. data/raw/arxiv.jsonl.gz")
    report = Report("quality")
    here = Path.cwd()
    for source in files:
        with tempfile.TemporaryDirectory(prefix="bench-quality-") as workdir:
            sample = subsample(Path(source), args.quality_papers, Path(workdir) / "sample.jsonl.gz")
            base = None
            for name in args.quality_candidates:
                overrides = {"download": {"source": "file", "path": str(sample), "max_records": None}, **CANDIDATES[name]}
                project = make_project(Path(workdir) / name, overrides)
                dvc(project, "repro", "finetune")
                os.chdir(project)
                try:
                    params = load_params()
                    data = lenses.load_eval_data(params.evaluate.max_train_papers, params.shared.seed)
                    if base is None:
                        base = _score(project, params.model.base, params, data)
                    tuned = _score(project, project / "models/finetuned", params, data)
                    finetune = json.loads((project / "metrics/finetune.json").read_text())
                finally:
                    os.chdir(here)
                label = f"{Path(source).name.split('.')[0]} [{name}]"
                report.add(f"{label} finetune wall time (s)", finetune["wall_time_s"], higher_is_better=False,
                           note=f"{data.test.height} test papers, {data.test['label'].n_unique()} labels")
                for key, (b, t, d, low, high) in paired_bootstrap(base, tuned).items():
                    target = TARGETS[key]
                    met = d >= target and low > 0 if target > 0 else d >= target
                    report.add(f"{label} {key}", round(t, 4), round(b, 4),
                               note=f"delta {d:+.4f} [95% {low:+.4f}, {high:+.4f}]; target {target:+.3f}: {'met' if met else 'MISSED'}")
    if note := load_note():
        report.notes.append(note)
    report.notes.append(f"paired bootstrap over test queries/triplets/papers, {BOOTSTRAP} resamples; "
                        f"macro-F1 over labels with >= {MIN_SUPPORT} test papers")
    return report
