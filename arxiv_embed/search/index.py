"""A small on-disk semantic-search index over papers, with float32 or 1-bit (binary) search.

Layout of an index folder:
    index.json       model identity (sha256 of its weights), precision, dimension, count
    papers.parquet   id, title, categories, text_sha256 (one row per embedding, same order)
    embeddings.npy   float32 L2-normalised embeddings (memory-mapped at query time)
    binary.npy       packed sign bits (precision binary only; the part searched in memory)

The binary index keeps the float32 embeddings on disk too: the Hamming search runs over the 32x
smaller bits in memory and only the few top candidates' float rows are read back for rescoring, so
rescoring costs a handful of disk reads instead of re-encoding abstracts with the model.
The folder is replaced in one rename (arxiv_embed.files.atomic_path), so an interrupted build leaves the
previous index as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from arxiv_embed.files import atomic_path
from arxiv_embed.models import encode, resolve_model
from arxiv_embed.errors import UserError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Precision = Literal["float32", "binary"]
MAX_K = 1000
MAX_QUERY_CHARS = 2000
WEIGHT_FILES = ("*.safetensors", "pytorch_model.bin")


class SearchError(UserError):
    """Bad input to build or query; the message names the file/flag and what to do."""


def model_identity(model_ref: str | Path) -> str:
    """sha256 over the model's weight files: the release and models/finetuned share one identity."""
    folder = resolve_model(str(model_ref))
    weights = sorted(p for pattern in WEIGHT_FILES for p in folder.rglob(pattern))
    if not weights:
        raise SearchError(f"model {model_ref} ({folder}) has no weight files ({', '.join(WEIGHT_FILES)})")
    digest = hashlib.sha256()
    for path in weights:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def read_papers(path: Path) -> pl.DataFrame:
    """id, title, categories (list), abstract from a papers parquet or Kaggle-schema JSON lines (.gz ok).

    Records without an id or abstract are reported and left out; a repeated id keeps its first record.
    """
    if not path.exists():
        raise SearchError(f"--papers {path}: no such file")
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
    else:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        try:
            frame = pl.read_ndjson(io.BytesIO(raw), infer_schema_length=None)
        except pl.exceptions.PolarsError as exc:
            raise SearchError(f"--papers {path}: not JSON lines ({exc})") from None
    missing = {"id", "title", "abstract", "categories"} - set(frame.columns)
    if missing:
        raise SearchError(f"--papers {path}: missing column(s) {sorted(missing)}; need id, title, abstract, categories")
    categories = pl.col("categories")
    if frame.schema["categories"] == pl.String:  # Kaggle schema: one space-separated string
        categories = categories.str.split(" ")
    frame = frame.select(
        pl.col("id").cast(pl.String),
        pl.col("title").str.replace_all(r"\s+", " ").str.strip_chars(),
        categories.alias("categories"),
        pl.col("abstract").str.replace_all(r"\s+", " ").str.strip_chars(),
    )
    invalid = frame.filter(pl.col("id").is_null() | (pl.col("abstract").fill_null("") == ""))
    if invalid.height:
        print(f"search: left out {invalid.height} record(s) of {path} without id or abstract: {invalid['id'].head(5).to_list()}")
    frame = frame.filter(pl.col("id").is_not_null() & (pl.col("abstract").fill_null("") != ""))
    if frame["id"].is_duplicated().any():
        print(f"search: {path} repeats {frame.height - frame['id'].n_unique()} id(s); keeping each id's first record")
        frame = frame.unique("id", keep="first", maintain_order=True)
    return frame.with_columns(
        pl.col("abstract").map_elements(lambda s: hashlib.sha256(s.encode()).hexdigest(), return_dtype=pl.String).alias("text_sha256")
    )


@dataclass
class Hit:
    id: str
    title: str
    score: float
    categories: list[str]


@dataclass
class SearchIndex:
    path: Path
    meta: dict
    papers: pl.DataFrame
    embeddings: np.ndarray
    bits: np.ndarray | None

    @classmethod
    def load(cls, path: Path | str) -> SearchIndex:
        path = Path(path)
        if not (path / "index.json").exists():
            raise SearchError(f"--index {path}: no search index there; build one with "
                              f"`python -m arxiv_embed.search build --papers PAPERS --index {path}`")
        meta = json.loads((path / "index.json").read_text(encoding="utf-8"))
        bits = np.load(path / "binary.npy") if meta["precision"] == "binary" else None
        return cls(path, meta, pl.read_parquet(path / "papers.parquet"),
                   np.load(path / "embeddings.npy", mmap_mode="r"), bits)

    def check_model(self, identity: str, model_ref: str) -> None:
        if identity != self.meta["model_sha256"]:
            raise SearchError(
                f"model {model_ref} (weights sha256 {identity[:12]}) does not match the index {self.path}, built "
                f"with {self.meta['model']} (sha256 {self.meta['model_sha256'][:12]}): query with that model, "
                "or rebuild the index into a new --index path with this one")

    def sizes(self) -> dict[str, int]:
        on_disk = sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
        searched = self.bits.nbytes if self.bits is not None else self.embeddings.nbytes
        return {"papers": self.papers.height, "bytes_on_disk": on_disk, "bytes_searched_in_memory": searched}

    def search(self, query: np.ndarray, k: int, rescore_multiplier: int = 4) -> list[Hit]:
        """Top-k by cosine; binary: Hamming top k*rescore_multiplier, then float32 rescoring of those."""
        k = min(k, self.papers.height)
        if k == 0:
            return []
        if self.bits is None:
            candidates = np.arange(self.papers.height)
        else:
            from sentence_transformers.util.quantization import quantize_embeddings

            query_bits = quantize_embeddings(query.reshape(1, -1), precision="ubinary")
            distance = np.bitwise_count(np.bitwise_xor(self.bits, query_bits)).sum(axis=1, dtype=np.int32)
            n = min(self.papers.height, k * rescore_multiplier)
            candidates = np.sort(np.argpartition(distance, n - 1)[:n])  # sorted: sequential mmap reads
        scores = np.asarray(self.embeddings[candidates]) @ query.reshape(-1)
        order = np.argsort(-scores, kind="stable")[:k]
        rows = self.papers[candidates[order].tolist()]
        return [Hit(row["id"], row["title"], float(score), list(row["categories"] or []))
                for row, score in zip(rows.iter_rows(named=True), scores[order])]


@dataclass
class BuildReport:
    encoded: int
    kept: int
    total: int
    seconds: float


def build_index(papers: pl.DataFrame, model: SentenceTransformer, model_ref: str, path: Path, precision: Precision,
                batch_size: int = 64) -> BuildReport:
    """Add `papers` to the index at `path` (created if absent), encoding only ids that are new or changed."""
    from sentence_transformers.util.quantization import quantize_embeddings

    start = time.perf_counter()
    identity = model_identity(model_ref)
    old_papers = pl.DataFrame(schema={"id": pl.String, "title": pl.String, "categories": pl.List(pl.String),
                                      "text_sha256": pl.String})
    old_embeddings = np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    if (path / "index.json").exists():
        old = SearchIndex.load(path)
        old.check_model(identity, model_ref)
        old_papers, old_embeddings = old.papers, np.asarray(old.embeddings)
    unchanged = papers.join(old_papers.select("id", "text_sha256"), on=["id", "text_sha256"], how="semi")
    todo = papers.join(unchanged.select("id"), on="id", how="anti")
    kept = old_papers.with_row_index("row").join(todo.select("id"), on="id", how="anti")
    new_embeddings = encode(model, todo["abstract"].to_list(), batch_size=batch_size) if todo.height else old_embeddings[:0]
    embeddings = np.concatenate([old_embeddings[kept["row"].to_numpy()], new_embeddings]).astype(np.float32)
    columns = ["id", "title", "categories", "text_sha256"]
    all_papers = pl.concat([kept.select(columns), todo.select(columns)], how="vertical_relaxed")
    with atomic_path(path) as tmp:
        tmp.mkdir()
        np.save(tmp / "embeddings.npy", embeddings)
        if precision == "binary":
            np.save(tmp / "binary.npy", quantize_embeddings(embeddings, precision="ubinary"))
        all_papers.write_parquet(tmp / "papers.parquet")
        meta = {"model": str(model_ref), "model_sha256": identity, "precision": precision,
                "dimension": int(embeddings.shape[1]), "count": all_papers.height, "text": "abstract"}
        (tmp / "index.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return BuildReport(encoded=todo.height, kept=kept.height, total=all_papers.height,
                       seconds=time.perf_counter() - start)
