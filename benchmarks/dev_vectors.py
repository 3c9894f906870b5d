"""The dev files' base-model vectors for benchmarks/objectives.py, each text encoded once.

Each dev file runs the real DAG up to embed_base in the project that `python -m benchmarks quality
--quality-workdir benchmarks/results/dev` keeps (every record of the file, in a seeded order), so the
two benchmarks share the encoding: embed_base encodes the train sample and the test split (titles,
abstracts and triplets; the whole split, as the test sample holds up to evaluate.max_test_papers).
What the research also reads and no stage encodes (the eval split) is encoded here, in resumable
chunks beside the project. The pooled file (both dev files as one, for learning-curve points beyond
one file's train split) runs the DAG to make_triplets only: its texts are the dev files' texts,
already encoded. Encoding is the expensive part (~15 min per 10k papers on 2 idle cores); everything
else in objectives.py takes seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.common import RESULTS_DIR
from benchmarks.quality import DEV_FILES, dev_project, kept_folder
from tests.harness import dvc

if TYPE_CHECKING:
    from arxiv_embed.embeddings import TextVectors

WORK = RESULTS_DIR / "dev"  # = quality --quality-workdir benchmarks/results/dev
POOLED_SUFFIX = "-pooled.jsonl.gz"
EXTRA_VECTORS = "extra-vectors"  # texts the research reads that embed_base did not encode


def folder(source: Path) -> Path:
    return kept_folder(WORK, source, 0)


def project(source: Path) -> Path:
    return folder(source) / "project"


def pooled_file(sources: list[Path]) -> Path:
    """The given files (the dev files: arxiv-dev-pooled.jsonl.gz) as one JSON-lines file, named after them; clean
    drops any paper they share."""
    sources = [Path(source) for source in sources]
    if sources == [Path(source) for source in DEV_FILES]:
        pooled = WORK / f"arxiv-dev{POOLED_SUFFIX}"
    else:
        names = "-".join(source.name.split(".")[0] for source in sources)
        digest = hashlib.sha256("\0".join(str(source.resolve()) for source in sources).encode()).hexdigest()[:8]
        pooled = WORK / f"{names[:80]}-{digest}{POOLED_SUFFIX}"
    if not pooled.exists():
        pooled.parent.mkdir(parents=True, exist_ok=True)
        tmp = pooled.with_name(f"tmp-{pooled.name}")
        try:
            with gzip.open(tmp, "wb") as out:
                for source in sources:
                    with gzip.open(source, "rb") as f:
                        shutil.copyfileobj(f, out)
            tmp.rename(pooled)
        finally:
            tmp.unlink(missing_ok=True)
    return pooled


def is_pooled(source: Path) -> bool:
    return source.parent == WORK and source.name.endswith(POOLED_SUFFIX)


def prepare(source: Path) -> Path:
    """The file's project, run to embed_base (DVC skips what is done; its chunks resume a killed
    encoding); the pooled file's to make_triplets."""
    dev_project(folder(source), source, 0)
    dvc(project(source), "repro", "make_triplets" if is_pooled(source) else "embed_base")
    return project(source)


def needed_texts(project_dir: Path) -> list[str]:
    """Every distinct text objectives.py reads: the train sample's, the eval and test splits' papers and triplets."""
    import polars as pl

    from arxiv_embed import paths
    from arxiv_embed.embeddings import distinct_texts

    read = lambda name, columns: pl.read_parquet(project_dir / name, columns=columns).get_columns()  # noqa: E731
    columns = read(paths.TRAIN_SAMPLE, ["abstract", "title"])
    for split in ("eval", "test"):
        columns += read(f"data/split/{split}.parquet", ["abstract", "title"])
        columns += read(f"data/triplets/{split}_triplets.parquet", ["anchor", "positive", "negative"])
    return distinct_texts(columns)


def known_vectors() -> TextVectors:
    """Every vector encoded so far under WORK (embed_base's of each project, and the extras)."""
    from arxiv_embed import paths
    from arxiv_embed.embeddings import VECTORS_FILE, TextVectors

    folders = [*WORK.glob(f"*/project/{paths.BASE_EMBEDDINGS}"), *WORK.glob(f"*/{EXTRA_VECTORS}")]
    return joined([TextVectors.load(path) for path in sorted(folders) if (path / VECTORS_FILE).exists()], width=0)


def joined(parts: list[TextVectors], width: int) -> TextVectors:
    """The parts' rows as one TextVectors, in order (with no parts, an empty one `width` wide)."""
    from arxiv_embed.embeddings import TextVectors

    if not parts:
        return TextVectors([], np.zeros((0, width), dtype=np.float32))
    return TextVectors([t for part in parts for t in part.texts], np.concatenate([np.asarray(part.vectors) for part in parts]))


def encode_files(files: list[Path]) -> None:
    """Each file's project brought to this checkout's code and run (DVC reruns only what changed: a project
    prepared before a change to the stages would otherwise keep the old splits and triplets), then the texts it
    needs that nothing under WORK has encoded yet, added to the file's extras."""
    from arxiv_embed.embeddings import TextVectors, embed_texts
    from arxiv_embed.files import atomic_path
    from arxiv_embed.models import load_model
    from tests.harness import params_with

    params = params_with()
    model = None
    for source in files:
        project_dir = prepare(source)
        known = known_vectors()
        missing = [text for text in needed_texts(project_dir) if text not in known.index]
        print(f"dev_vectors: {source.name}: {len(missing):,} texts to encode (the rest are cached)", flush=True)
        if not missing and prepared(source):
            continue
        extras = [TextVectors.load(folder(source) / EXTRA_VECTORS)] if prepared(source) else []
        if missing:
            model = model or load_model(params.model.base, params.model.max_seq_length, params.model.trust_remote_code,
                                        backend=params.embed_base.backend)
            key = f"{params.model.base}|{params.model.max_seq_length}|{params.embed_base.backend}"
            extras.append(embed_texts(model, missing, folder(source) / "extra-chunks", key, params.embed_base.batch_size,
                                      what="dev_vectors"))
        with atomic_path(folder(source) / EXTRA_VECTORS) as tmp:
            joined(extras, known.vectors.shape[1]).save(tmp)


def prepared(source: Path) -> bool:
    """Whether --objectives-prepare has encoded what the file's research reads (it writes the extras last)."""
    return (folder(source) / EXTRA_VECTORS).exists()


def cached_vectors(source: Path) -> TextVectors:
    """The vectors of every text the file's research reads, looked up by text as the stages read embed_base's."""
    if not prepared(source):
        raise SystemExit(f"objectives: {source.name}: not encoded yet: run --objectives-prepare")
    from arxiv_embed import paths

    known = known_vectors()
    needed = needed_texts(project(source))
    if missing := sum(text not in known.index for text in needed):
        # An output gone (DVC deleted embed_base's before rerunning it until dvc.yaml kept it, `persist`; or by hand).
        lost = [str(lock.parent) for lock in sorted(WORK.glob("*/project/dvc.lock"))
                if "embed_base:" in lock.read_text() and not (lock.parent / paths.BASE_EMBEDDINGS).exists()]
        raise SystemExit(f"objectives: {source.name}: {missing:,} of its {len(needed):,} texts have no cached vector; "
                         f"embed_base's output is missing in {', '.join(lost) or 'no project'}: restore it there with "
                         "`dvc checkout embed_base` (or rerun `python -m benchmarks quality --quality-workdir benchmarks/results/dev`)")
    return known.subset(needed)
