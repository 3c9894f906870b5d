"""Every file the DAG reads or writes, relative to the project root (DVC runs stages there).

Stage code takes paths from here only; dvc.yaml names the same paths (tests/test_layout.py keeps
the two in step).
"""

import os
from pathlib import Path


def project_root() -> Path:
    """The project's own root, also from inside a DVC experiment's temporary workspace.

    DVC sets DVC_ROOT for every stage command, to the parent repository for `--temp` and queued
    experiments (dvc/repo/experiments/queue/base.py); without it (a stage run by hand) the working
    directory is the root. A path inside `<root>/.dvc/tmp/exps/` is resolved to `<root>` either way.
    """
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def kept_between_runs(path: Path) -> Path:
    """`path` in the project's own root: state one run leaves for the next that is no DVC out (reusable vectors, a
    stopped harvest's pages). A `dvc exp run --temp` or queued run works in a temporary copy that DVC deletes; there
    a relative path would start every sweep point from nothing and lose what it leaves."""
    return project_root() / path


def user_path(path: str | Path) -> Path:
    """A path a user gave (download.path, a local model.base): as given; relative and not in this workspace, in the
    project's root: a `dvc exp run --temp` or queued run works in a copy that holds git's files only, so an untracked
    file or folder the path names is the project's."""
    given = Path(path).expanduser()
    return given if given.is_absolute() or given.exists() else kept_between_runs(given)


def local_reference(name: str) -> bool:
    """Whether `model.base` names a path (./my-model, ~/m, /abs, models/finetuned, a folder here), not a Hub id or package."""
    local = Path(name).expanduser()
    return (local.exists() or local.is_absolute() or name.startswith((".", "~"))
            or (len(local.parts) > 1 and Path(local.parts[0]).is_dir()))


RAW = Path("data/raw/arxiv.jsonl.gz")
OAI_PAGES = Path("data/raw/oai-pages")  # an OAI harvest's answered pages, kept until it is written so a stopped one resumes; not a DVC out (kept_between_runs)

CLEAN_DIR = Path("data/clean")
PAPERS = CLEAN_DIR / "papers.parquet"
REJECTS = CLEAN_DIR / "rejects.jsonl"

SPLIT_DIR = Path("data/split")
SPLITS = ("train", "eval", "test")


def split_file(split: str) -> Path:
    return SPLIT_DIR / f"{split}.parquet"


TRIPLETS_DIR = Path("data/triplets")


def training_file(split: str, kind: str) -> Path:
    """make_triplets' file of one kind (training.data.KINDS) for one split."""
    return TRIPLETS_DIR / f"{split}_{kind}.parquet"


# make_triplets' stratified, seeded sample of the train split (make_triplets.max_train_papers): every
# train kind, the adapter's labels, mining's corpus and the classifier's train slice come from it.
TRAIN_SAMPLE = TRIPLETS_DIR / "train_papers.parquet"

# embed_base: the base model's vectors of every text the later stages read (arxiv_embed/embeddings.py).
EMBEDDINGS_DIR = Path("data/embeddings")
BASE_EMBEDDINGS = EMBEDDINGS_DIR / "base"
# sha256 of the train sample's texts and their vectors in BASE_EMBEDDINGS: finetune's dependency instead of the whole
# folder, so a change to the test sample alone (evaluate.*) re-encodes and re-scores but does not retrain.
BASE_TRAIN_FINGERPRINT = EMBEDDINGS_DIR / "base-train.sha256"
EMBED_WORK = EMBEDDINGS_DIR / "chunks"  # finished chunks, kept between runs so a killed embed_base resumes; not a DVC out (kept_between_runs)
EMBED_REUSE = EMBEDDINGS_DIR / "reuse"  # recent runs' vectors per encoder key (embed_base.reuse_max_texts), read by the next embed_base (another sample); not a DVC out (kept_between_runs)
EVALUATE_WORK = EMBEDDINGS_DIR / "chunks-finetuned"  # evaluate's in mode=full (the fine-tuned model's vectors, named by its finetune run), kept so a killed one resumes; not a DVC out (kept_between_runs)


MODELS_DIR = Path("models")
FINETUNED = MODELS_DIR / "finetuned"
CHECKPOINTS = MODELS_DIR / "checkpoints"  # one folder per run key, kept between runs for resume; not a DVC out (kept_between_runs)
RELEASE = MODELS_DIR / "release"  # push: the self-describing folder users load and upload

METRICS_DIR = Path("metrics")
PLOTS_DIR = METRICS_DIR / "plots"


# The few numbers that decide whether a run is better: with the runtime records below, dvc.yaml's declared metrics (what
# `dvc metrics show/diff` and `dvc exp show` print); every other JSON here is a plain output.
HEADLINE = METRICS_DIR / "headline.json"


def metrics_file(stage: str) -> Path:
    return METRICS_DIR / f"{stage}.json"


EVALUATE_REPORT = metrics_file("evaluate")  # base, finetuned, delta, delta_ci95 for every lens metric
EVALUATE_MARKDOWN = METRICS_DIR / "evaluate.md"
LEARNING_CURVE = METRICS_DIR / "learning_curve.csv"  # one macro-F1 column per model, for `dvc plots`
CONFUSION = METRICS_DIR / "confusion.csv"
FINETUNE_LOSS = METRICS_DIR / "finetune_loss.csv"
TRAINING_SUMMARY = "training_summary.json"  # in models/finetuned: finetune's summary (steps, loss)
# How a run went, not what it made: wall times, rates, reuse, resume, the MLflow run. Git-tracked (dvc.yaml: `cache:
# false`, run-cached with its stage), so every DVC-cached output depends on its inputs alone and a fresh clone's run of
# the committed params hashes as the committed run does, but for the release, which names its git commit.
RUNTIME_DIR = METRICS_DIR / "runtime"


def runtime_file(stage: str) -> Path:
    return RUNTIME_DIR / f"{stage}.json"


FINETUNE_RUNTIME = runtime_file("finetune")  # its mlflow_run_id: the run evaluate and push log into


EVAL_DIR = Path("data/eval")  # per-model results of evaluate_base / evaluate, combined into metrics/evaluate.json


def eval_dir(model: str) -> Path:
    return EVAL_DIR / model
