"""A kept on-disk semantic-search index over papers (FAISS), built incrementally and replaced atomically.

Layout of an index folder:
    index.json       model identity (sha256 of its weights), its encoder's (encoder_identity), precision, dimension,
                     count, FAISS index kind
    index.faiss      the FAISS index: IndexRaBitQ, 1-bit codes, or from 100k papers IndexIVFRaBitQ (binary);
                     IndexFlatIP (float32)
    embeddings.npy   float32 L2-normalised embeddings, memory-mapped: binary rescoring reads the
                     candidates' rows only, "similar papers" reads the paper's own row (no re-encoding)
    encoder.npy      with a model finetune.mode=adapter saved: the same rows from its encoder alone (before the
                     adapter). A later adapter on the same encoder (a retrained release) is applied to these in
                     minutes instead of encoding every abstract again (~17 h at 2.7M on 2 cores). With a model that
                     has no adapter, its embeddings are its encoder's vectors and no second file is written.
    papers.arrow     id, title, authors, categories, year, abstract, text_sha256 (row i = vector i),
                     Arrow IPC memory-mapped, so 2.7M abstracts cost disk, not memory

The folder is replaced in one rename (arxiv_embed.files.atomic_path), so an interrupted build leaves the
previous index as it was; the encoding itself is saved in chunks beside it and resumes.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from arxiv_embed.files import atomic_path, recover
from arxiv_embed.models import WEIGHT_FILES, resolve_model, weights_sha256
from arxiv_embed.progress import Progress
from arxiv_embed.search import engine
from arxiv_embed.embeddings import adapter_function, encode_into, encoder_identity, split_adapter
from arxiv_embed.search.engine import (RESCORE_MULTIPLIER, Precision, index_bytes_per_vector, is_ivf, is_ivf_size, make_index,
                                      rescore, scan_rows, search_index)
from arxiv_embed.search.papers import COLUMNS, SearchError, UnknownPaperError, archive_expr, archive_of, first_line, read_papers  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# index.json "format": 3 since the 1-bit index is RaBitQ (2: ITQ-rotated signs in IndexBinaryFlat + rotation.npy).
FORMAT = 3
RETRAIN_GROWTH = 4  # an index grown past 4x the rows it was trained on is rebuilt (its lists would be unbalanced)
SNIPPET_CHARS = 320
ENCODER_VECTORS = "encoder.npy"
BLOCK = 65536  # rows copied or passed through an adapter at a time: a 2.7M-row build never holds all its vectors


def model_identity(model_ref: str | Path) -> str:
    """sha256 over the model's weight files: the release and models/finetuned share one identity."""
    folder = resolve_model(str(model_ref), setting="--model")
    if (identity := weights_sha256(folder)) is None:
        raise SearchError(f"model {model_ref} ({folder}) has no weight files ({', '.join(WEIGHT_FILES)})")
    return identity


@dataclass
class Hit:
    id: str
    title: str
    authors: str
    categories: list[str]
    year: int | None
    snippet: str
    score: float
    url: str


def _snippet(abstract: str) -> str:
    if len(abstract) <= SNIPPET_CHARS:
        return abstract
    return abstract[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …"


def open_rows(path: Path) -> np.ndarray:
    """A read-only memory map of float rows, read at random: the kernel's read-ahead would otherwise pull
    ~128 KB around every 1.5 KB row that rescoring or "similar" reads."""
    import mmap

    rows = np.load(path, mmap_mode="r")
    if rows.size and hasattr(mmap, "MADV_RANDOM"):
        rows._mmap.madvise(mmap.MADV_RANDOM)
    return rows


class RowTexts(Sequence):
    """The texts of `rows` of `column`, gathered a slice at a time (encode_into reads chunks): a first build of 2.7M
    papers never holds every abstract again, as Python strings (~2.6 KB a paper) or as a gathered column."""

    def __init__(self, column: pl.Series, rows: pl.Series) -> None:
        self.column, self.rows = column, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | slice) -> str | list[str]:
        if isinstance(item, slice):
            return self.column.gather(self.rows[item]).to_list()
        return self.column[self.rows[item]]


def no_index_there(path: Path) -> SearchError:
    """The command line's error for an --index folder with no index (a server instead waits for one)."""
    return SearchError(f"--index {path}: no search index there; build one with "
                       f"`python -m arxiv_embed.search build --papers PAPERS --index {path}`")


@dataclass
class SearchIndex:
    path: Path
    meta: dict
    papers: pa.Table
    embeddings: np.ndarray
    index: object
    _filters: dict[str, np.ndarray] | None = None
    _bytes_on_disk: int | None = None

    @classmethod
    def load(cls, path: Path | str) -> SearchIndex:
        import faiss

        path = Path(path)
        if not (path / "index.json").exists():
            raise no_index_there(path)
        meta = _read_meta(path)
        # A float32 index of format 2 is the same IndexFlatIP; a binary one holds the old 1-bit index.
        if meta.get("format") != FORMAT and not (meta.get("format") == 2 and meta.get("precision") == "float32"):
            if meta.get("format") == 2:
                raise SearchError(f"--index {path} holds the 1-bit index of an older version (ITQ-rotated signs, since "
                                  "replaced by RaBitQ): rebuild it with `python -m arxiv_embed.search build --papers "
                                  f"PAPERS --index {path}`; its stored embeddings are reused, nothing is re-encoded")
            raise SearchError(f"--index {path} was built by an older version of this project: rebuild it with "
                              f"`python -m arxiv_embed.search build --papers PAPERS --index {path}` into a new folder")
        with _damaged(path, "index.faiss"):
            index = faiss.read_index(str(path / "index.faiss"))
        loaded = cls(path, meta, _read_papers(path), _read_embeddings(path), index)
        # Measured now, not at a request: one could fall between a rebuild's two renames (or see the new folder).
        loaded._bytes_on_disk = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return loaded

    @classmethod
    def load_for_build(cls, path: Path) -> SearchIndex:
        """The stored papers and embeddings a build reuses, without the FAISS index: an index of format 2
        (the ITQ 1-bit index) upgrades in place, encoding nothing that is already there."""
        meta = _read_meta(path)
        if meta.get("format") not in (2, FORMAT):
            return cls.load(path)  # raises the rebuild message
        return cls(path, meta, _read_papers(path), _read_embeddings(path), None)

    @property
    def count(self) -> int:
        return self.papers.num_rows

    def check_model(self, identity: str, model_ref: str) -> None:
        if identity != self.meta["model_sha256"]:
            raise SearchError(model_mismatch(self.path, self.meta, identity, model_ref))

    def sizes(self) -> dict[str, int]:
        on_disk = self._bytes_on_disk or 0
        per_vector = index_bytes_per_vector(self.index) if self.index is not None else 0
        return {"papers": self.count, "bytes_on_disk": on_disk, "bytes_searched_in_memory": self.count * per_vector}

    def categories(self) -> dict[str, int]:
        """Paper counts per category and per archive (cs.LG and cs), the values a search can filter on."""
        return {name: len(rows) for name, rows in sorted(self._category_rows().items())}

    def _category_rows(self) -> dict[str, np.ndarray]:
        """Row numbers (int32) per category and archive: ~4 bytes per listing, not a mask per category."""
        if self._filters is None:
            listed = (pl.from_arrow(self.papers.select(["categories"])).with_row_index("row")
                      .explode("categories").drop_nulls("categories"))
            archives = listed.with_columns(archive_expr(pl.col("categories")).alias("categories"))
            listed = pl.concat([listed, archives]).unique(maintain_order=True)
            self._filters = {name: group["row"].to_numpy().astype(np.int32)
                             for (name,), group in listed.group_by("categories")}
        return self._filters

    def category_name(self, category: str | None) -> str | None:
        """arXiv's own spelling (cs.LG, hep-th) whatever the case typed: cs.lg and CS.LG mean the same listing."""
        if not category:
            return None
        return {name.lower(): name for name in self._category_rows()}.get(category.strip().lower(), category)

    def _filter_rows(self, category: str | None) -> np.ndarray | None:
        """The rows a category filter lets through (None: no filter)."""
        if not category:
            return None
        rows = self._category_rows()
        category = self.category_name(category)
        if category not in rows:
            known = ", ".join(sorted(name for name in rows if "." not in name)[:20])
            raise SearchError(f"category {category!r} has no papers in this index; archives here: {known}")
        return rows[category]

    def _allowed(self, rows: np.ndarray | None) -> np.ndarray | None:
        if rows is None:
            return None
        mask = np.zeros(self.count, dtype=bool)  # per query: ~1 ms for 2.7M papers
        mask[rows] = True
        return mask

    def row_of(self, paper_id: str) -> int:
        import pyarrow.compute as pc

        row = pc.index(self.papers.column("id"), paper_id).as_py()
        if row < 0:
            raise UnknownPaperError(f"no paper with id {paper_id!r} in the index {self.path}")
        return row

    @property
    def rescore_multiplier(self) -> int:
        """Candidates rescored per result, as the build chose it (indexes before it was stored: the default)."""
        return int(self.meta.get("rescore_multiplier", RESCORE_MULTIPLIER))

    def search(self, query: np.ndarray, k: int, category: str | None = None, rescore_multiplier: int | None = None,
               exclude_row: int | None = None) -> list[Hit]:
        """Top-k papers by cosine; binary: RaBitQ's top k * rescore_multiplier (default: the index's own), re-ranked by float cosine."""
        rescore_multiplier = rescore_multiplier or self.rescore_multiplier
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        exclude = None if exclude_row is None else np.array([exclude_row])
        filtered = self._filter_rows(category)
        if self.meta["precision"] == "binary" and filtered is not None and len(filtered) <= engine.EXACT_FILTER_ROWS:
            # A selective filter: its few float rows cost less to scan than the index's lists holding them.
            rows = scan_rows(query, self.embeddings, np.sort(filtered), k, exclude_row)[0]
        elif self.meta["precision"] == "binary":
            allowed = self._allowed(filtered)
            wanted = k * rescore_multiplier
            _, candidates = search_index(self.index, query, wanted, allowed, exclude)
            if allowed is not None and candidates.shape[1] < min(wanted, len(filtered) - bool(exclude_row is not None and allowed[exclude_row])):
                # The lists a partitioned index probed held too few of the filter's rows: scan those rows exactly.
                candidates = scan_rows(query, self.embeddings, np.sort(filtered), wanted, exclude_row)
            rows = rescore(query, self.embeddings, candidates, k)[0]
        else:
            rows = search_index(self.index, query, k, self._allowed(filtered), exclude)[1][0]
        scores = np.asarray(self.embeddings[np.sort(rows)], dtype=np.float32) @ query[0]
        score_of = dict(zip(np.sort(rows).tolist(), scores.tolist()))
        return self.hits(rows.tolist(), [score_of[row] for row in rows.tolist()])

    def hits(self, rows: list[int], scores: list[float]) -> list[Hit]:
        # Row by row through zero-copy slices: Table.take on the memory-mapped table concatenates each column's
        # chunks first, i.e. copies every abstract (seconds at 2.7M papers) to return ten.
        papers = [self.papers.slice(row, 1).to_pylist()[0] for row in rows]
        return [Hit(p["id"], p["title"], p["authors"] or "", list(p["categories"] or []), p["year"], _snippet(p["abstract"]),
                    round(float(score), 4), f"https://arxiv.org/abs/{p['id']}") for p, score in zip(papers, scores)]

    def similar(self, paper_id: str, k: int, category: str | None = None, rescore_multiplier: int | None = None) -> tuple[Hit, list[Hit]]:
        """The paper and its k nearest other papers, from its stored embedding."""
        row = self.row_of(paper_id)
        vector = np.asarray(self.embeddings[row], dtype=np.float32)
        return self.hits([row], [1.0])[0], self.search(vector, k, category, rescore_multiplier, exclude_row=row)


@contextmanager
def _damaged(path: Path, name: str) -> Iterator[None]:
    """A file of the index that cannot be read (deleted, truncated or copied in part): one line that says so."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, pa.ArrowException) as error:  # faiss raises RuntimeError, numpy ValueError
        how = (f"rebuild it in place (`python -m arxiv_embed.search build --papers PAPERS --index {path}`: its stored "
               "embeddings are reused)" if name == "index.faiss" else
               "rebuild it into a new folder (`python -m arxiv_embed.search build --papers PAPERS --index NEW_FOLDER`)")
        raise SearchError(f"--index {path} is incomplete or damaged ({name}: {first_line(error)}): {how}") from None


def _read_meta(path: Path) -> dict:
    with _damaged(path, "index.json"):
        return json.loads((path / "index.json").read_text(encoding="utf-8"))


def _read_papers(path: Path) -> pa.Table:
    with _damaged(path, "papers.arrow"):
        return pa.ipc.open_file(pa.memory_map(str(path / "papers.arrow"))).read_all()


def _read_embeddings(path: Path) -> np.ndarray:
    with _damaged(path, "embeddings.npy"):
        return open_rows(path / "embeddings.npy")


def model_mismatch(path: Path, meta: dict, identity: str, model_ref: str) -> str:
    """Why `model_ref` cannot search or extend the index at `path`, and the two ways on."""
    return (f"model {model_ref} (weights sha256 {identity[:12]}) does not match the index {path}, built with "
            f"{meta['model']} (sha256 {meta['model_sha256'][:12]}; a pipeline run that retrains replaces a release "
            f"folder's weights): query with a copy of those weights (--model), or re-encode the index's papers with this "
            f"model: `python -m arxiv_embed.search build --index {path} --model {model_ref} --new-model` (add --papers FILE "
            "to take in new or changed papers too; where the index holds the vectors of this model's encoder, as one built "
            "with its base model or with an adapter trained on that base model does, only the adapter runs)")


def check_build_model(path: Path, identity: str, model_ref: str, new_model: bool, papers_given: bool = True) -> None:
    """Refuse, before any papers are read (index.json only), a build whose model is not the index's unless `new_model`
    allows it: it re-encodes every paper (hours at 2.7M on a CPU), which a typo in --model should not start; and a
    build without papers that has nothing to re-encode."""
    meta = _read_meta(path) if (path / "index.json").exists() else None
    if not papers_given and meta is None:
        raise SearchError(f"build: --index {path} holds no index yet: give --papers FILE to build one")
    if meta is None or meta.get("model_sha256") is None:
        return
    if not new_model and meta["model_sha256"] != identity:
        raise SearchError(model_mismatch(path, meta, identity, model_ref))
    if not papers_given and meta["model_sha256"] == identity:
        raise SearchError(f"build: --index {path} was built with these weights already ({model_ref}): nothing to re-encode "
                          "(give --papers FILE to add papers)")


def check_index_path(path: Path) -> None:
    """Refuse an --index that is not a search index before any work: the build replaces the folder at `path`
    whole, so a folder of other files would lose them, and a file would fail only after hours of encoding.
    Reads only (a previous build's leftovers are recovered under the build lock)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SearchError(f"--index {path} is a file, not an index folder: give a new folder, or an index built before")
    if path.is_dir() and not (path / "index.json").exists() and any(path.iterdir()):
        raise SearchError(f"--index {path} holds files but no search index (no index.json), and a build replaces the "
                          "whole folder: give a new or empty folder")


_HELD_BUILD_LOCKS: set[Path] = set()  # taken by this process: the CLI takes it before reading papers, build_index again


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """One build of an index at a time: two would share its saved chunks, and the later swap would drop the
    earlier build's papers. The OS releases the lock of a killed build; the lock file stays (git-ignored)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = (path.parent / f".{path.name}.build-lock").resolve()
    if lock_file in _HELD_BUILD_LOCKS:
        yield
        return
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SearchError(f"another build of --index {path} is running (it holds {lock_file}): wait for it "
                          "to finish, then run this one; it encodes only what that one did not") from None
    _HELD_BUILD_LOCKS.add(lock_file)
    try:
        yield
    finally:
        _HELD_BUILD_LOCKS.discard(lock_file)
        lock.release()


@dataclass
class BuildReport:
    encoded: int  # new or changed abstracts, encoded now or resumed from an interrupted build's saved chunks
    kept: int  # unchanged papers whose stored embeddings were reused
    total: int
    seconds: float
    resumed: int = 0  # of `encoded`: read back from saved chunks, not encoded again
    reencoded: bool = False  # every paper encoded with a model the index was not built with (new_model)
    readapted: bool = False  # new_model on the index's encoder: kept papers' stored encoder vectors through its adapter
    copied: int = 0  # new or changed papers whose abstract another paper has: its vector copied, not encoded again


def stored_model(model_ref: str | Path) -> str:
    """What index.json records: a local model folder by absolute path (an index is queried from anywhere), else the name."""
    local = Path(model_ref).expanduser()
    return str(local.resolve()) if local.is_dir() else str(model_ref)


def empty_papers() -> pl.DataFrame:
    """A papers frame with no rows (also what a --new-model build without --papers re-encodes the index's own from)."""
    return pl.DataFrame(schema={**COLUMNS, "text_sha256": pl.String})


def build_index(papers: pl.DataFrame, model: SentenceTransformer, model_ref: str, path: Path, precision: Precision | None,
                batch_size: int = 64, processes: int | None = None, rescore_multiplier: int | None = None,
                backend: str = "torch", identity: str | None = None, new_model: bool = False) -> BuildReport:
    """Add `papers` to the index at `path` (created if absent), encoding only ids that are new or changed.
    backend: the one `model` was loaded with; an interrupted build resumes only chunks of the same model and backend.
    rescore_multiplier: stored with the index; None keeps the existing index's (else RESCORE_MULTIPLIER).
    precision: None keeps the existing index's (else binary).
    identity: model_identity(model_ref) when the caller has it (hashing a large model's weights takes seconds).
    new_model: an index built with another model is re-encoded whole with this one (its papers that `papers` lacks
    included) instead of refused; when the index holds the vectors of this model's encoder (a retrained adapter on the
    same base model), only the adapter runs on them."""
    path = Path(path).resolve()  # a link to an index elsewhere (another disk): its target is the folder replaced
    with build_lock(path):
        return _build_index(papers, model, model_ref, path, precision, batch_size, processes, rescore_multiplier, backend,
                            identity or model_identity(model_ref), new_model)


def _build_index(papers: pl.DataFrame, model: SentenceTransformer, model_ref: str, path: Path, precision: Precision | None,
                 batch_size: int, processes: int | None, rescore_multiplier: int | None, backend: str, identity: str,
                 new_model: bool = False) -> BuildReport:
    start = time.perf_counter()
    recover(path)  # a build killed between its two renames left the previous index aside: put it back before reading it
    check_index_path(path)
    encoder, adapter = split_adapter(model)
    encoder_sha256 = encoder_identity(encoder, backend)
    old_keys, old_embeddings = empty_papers().select("id", "text_sha256"), np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    old_encoded: np.ndarray | None = None  # the old index's vectors from this model's encoder, when it has them
    old_batches: list[pa.RecordBatch] = []
    reencoded = readapted = False
    other_encoder = False  # the old index recorded its encoder's vectors, of another encoder than this model's
    if (path / "index.json").exists():
        old = SearchIndex.load_for_build(path)
        if rescore_multiplier is None:
            rescore_multiplier = old.rescore_multiplier
        precision = precision or old.meta["precision"]  # an update keeps exact search exact unless asked otherwise
        old_encoded = _stored_encoder_vectors(old, encoder_sha256)
        other_encoder = old_encoded is None and old.meta.get("encoder_sha256") is not None
        another_model = new_model and old.meta.get("model_sha256") != identity
        if another_model and old_encoded is None:
            papers = _with_papers_only_in(old, papers, model_ref, identity)  # nothing of the old model's is kept
            reencoded = True
        else:
            if another_model:
                readapted = True
                print(f"search: {old.path} holds the vectors of {model_ref}'s encoder (built with {old.meta['model']}): "
                      "its papers are not encoded again, only this model's adapter runs on them", file=sys.stderr, flush=True)
            else:
                old.check_model(identity, model_ref)
            # Only the keys are read into memory: the stored abstracts stay memory-mapped (2.7M of them are ~3 GB).
            old_keys, old_embeddings = pl.from_arrow(old.papers.select(["id", "text_sha256"])), old.embeddings
            old_batches = old.papers.to_batches()
    rescore_multiplier = rescore_multiplier or RESCORE_MULTIPLIER
    precision = precision or "binary"
    new_keys = papers.select("id", "text_sha256").with_row_index("new_row")
    unchanged = new_keys.join(old_keys, on=["id", "text_sha256"], how="semi", maintain_order="left")
    todo = new_keys.join(unchanged.select("id"), on="id", how="anti", maintain_order="left")
    # Kept rows stay in the old index's order (row i = stored vector i). Where the new file has the paper its row is
    # written, metadata included: a title, author list or cross-listed category can change while the abstract (all that
    # is encoded) does not. Papers only in the old index keep their stored row.
    kept = (old_keys.with_row_index("row").join(todo.select("id"), on="id", how="anti", maintain_order="left")
            .join(new_keys.select("id", "new_row"), on="id", how="left", maintain_order="left"))
    # Every row's encoder vector is known (kept ones stored under this encoder): the new index can hold them too. Else
    # (an adapter model's index built before encoder.npy, or with another backend) the model encodes whole, as it did.
    encoder_complete = kept.height == 0 or old_encoded is not None
    split = adapter is not None and encoder_complete
    # A text the index holds under another id, or that another new row has (one abstract, two ids), is encoded once: its
    # vector is copied. The rows to encode come first, the copies after them.
    stored = old_encoded if split or readapted else old_embeddings  # the old rows' vectors this build starts from
    stored_texts = (old_keys.with_row_index("old_row").unique("text_sha256", keep="first", maintain_order=True)
                    .select("text_sha256", "old_row"))
    if stored is None:  # no old vector this build can use: every new text is encoded
        stored_texts = stored_texts.clear()
    todo = (todo.join(stored_texts, on="text_sha256", how="left", maintain_order="left")
            .with_columns(encode=pl.col("old_row").is_null() & pl.col("text_sha256").is_first_distinct())
            .sort("encode", descending=True, maintain_order=True))
    n_encode = int(todo["encode"].sum())
    plan = pl.concat([kept.select("row", "new_row"), todo.select(pl.lit(None, dtype=pl.UInt32).alias("row"), "new_row")])
    texts = RowTexts(papers["abstract"], todo["new_row"][:n_encode])
    if other_encoder and not encoder_complete:
        print(f"search: {path}'s encoder vectors were made with other settings than this build's (backend, sequence "
              "length): the new index keeps none, so a later --new-model build encodes every paper", file=sys.stderr, flush=True)
    work_dir = encoding_dir(path)
    what = (f"every one of the {todo.height} papers to encode with the new model" if reencoded
            else f"{todo.height} new or changed papers to encode, {kept.height} kept from {path}"
            + (" (through the new model's adapter)" if readapted else ""))
    if todo.height > n_encode:
        what += f"; {todo.height - n_encode} of them have the abstract of another paper, whose vector is copied"
    print(f"search: {what}", file=sys.stderr, flush=True)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        # Kept rows, then new ones, written straight into the new index's memory-mapped float files: a
        # 2.7M-paper build never holds its 4 GB of vectors on the heap, let alone twice.
        embeddings = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32,
                                               shape=(plan.height, model.get_embedding_dimension()))
        encoded = (np.lib.format.open_memmap(tmp / ENCODER_VECTORS, mode="w+", dtype=np.float32,
                                             shape=(plan.height, encoder.get_embedding_dimension())) if split else embeddings)
        kept_rows = kept["row"].to_numpy()
        copied = Progress("search: kept papers' vectors copied", len(kept_rows), "papers", interval_s=15.0)
        for first in range(0, len(kept_rows), BLOCK):  # from the old memory-mapped files: 2.7M rows take ~a minute
            block = kept_rows[first:first + BLOCK]
            if not readapted:  # another adapter's vectors are worth nothing: the new ones come from the encoder's
                embeddings[first:first + len(block)] = old_embeddings[block]
            if split or readapted:
                encoded[first:first + len(block)] = old_encoded[block]
            copied.update(len(block))
        if copied.count:
            copied.done()
        if readapted and adapter is not None:
            _adapt(adapter, encoded, embeddings, 0, kept.height, "search: kept papers through the new adapter")
        fresh = slice(kept.height, kept.height + n_encode)
        if split:  # the encoder encodes, the adapter maps: the encoder's vectors are kept for the next adapter
            resumed = encode_into(encoder, texts, encoded[fresh], work_dir, f"{encoder_sha256}|encoder", batch_size,
                                  processes=processes, what="search")
        else:
            resumed = encode_into(model, texts, embeddings[fresh], work_dir, f"{identity}|{backend}", batch_size,
                                  processes=processes, what="search")
        _copy_same_texts(todo, n_encode, kept.height, encoded, stored)
        if split:
            _adapt(adapter, encoded, embeddings, kept.height, plan.height, "search: encoded papers through the adapter")
        embeddings.flush()
        new_embeddings = embeddings[kept.height:]
        # Every vector is new after another adapter: the old index's codes are of the old vectors, so it is made anew.
        index = None if readapted else _appendable_index(path, kept, len(old_embeddings), precision, len(embeddings))
        trained_rows = len(embeddings)
        if index is not None:  # only papers were added: the trained index takes the new codes, nothing is rebuilt
            trained_rows = _read_meta(path).get("trained_rows", len(old_embeddings))
            for first in range(0, len(new_embeddings), BLOCK):
                index.add(np.ascontiguousarray(new_embeddings[first:first + BLOCK]))
        _write_index_files(tmp, _planned_papers(plan, papers, old_batches), embeddings, precision, stored_model(model_ref),
                           identity, rescore_multiplier, index, trained_rows, encoder_sha256 if encoder_complete else None,
                           ENCODER_VECTORS if split else "embeddings.npy")
        del embeddings, new_embeddings, encoded  # the memory maps close before the folder is swapped in
    shutil.rmtree(work_dir, ignore_errors=True)
    return BuildReport(encoded=n_encode, kept=kept.height, total=plan.height, seconds=time.perf_counter() - start,
                       resumed=resumed, reencoded=reencoded, readapted=readapted, copied=todo.height - n_encode)


def _copy_same_texts(todo: pl.DataFrame, n_encode: int, first: int, vectors: np.ndarray, stored: np.ndarray) -> None:
    """vectors[first + i] for each todo row i past n_encode: the stored vector of the old row with its text, or the one
    just encoded for the new row with its text."""
    copies = todo.slice(n_encode).with_row_index("at", offset=first + n_encode)
    encoded_at = todo.head(n_encode).with_row_index("from", offset=first).select("text_sha256", "from")
    from_new = copies.filter(pl.col("old_row").is_null()).join(encoded_at, on="text_sha256", how="left")
    from_old = copies.filter(pl.col("old_row").is_not_null())
    for rows, source, column in ((from_old, stored, "old_row"), (from_new, vectors, "from")):
        for block in range(0, rows.height, BLOCK):
            part = rows.slice(block, BLOCK)
            vectors[part["at"].to_numpy()] = source[part[column].to_numpy()]


def _stored_encoder_vectors(index: SearchIndex, encoder_sha256: str) -> np.ndarray | None:
    """The index's vectors from the encoder `encoder_sha256` names (memory-mapped), when it recorded them: encoder.npy
    beside an adapter model's embeddings, or the embeddings of a model with no adapter. None for any other encoder."""
    if index.meta.get("encoder_sha256") != encoder_sha256:
        return None
    name = index.meta.get("encoder_vectors", "embeddings.npy")
    with _damaged(index.path, name):
        vectors = open_rows(index.path / name)
        if len(vectors) != index.count:
            raise ValueError(f"{len(vectors)} rows for {index.count} papers")
    return vectors


def _adapt(adapter: list, encoded: np.ndarray, embeddings: np.ndarray, first: int, end: int, what: str) -> None:
    """embeddings[first:end] = the adapter over encoded[first:end], a block at a time (2.7M rows: about a minute)."""
    run, meter = adapter_function(adapter), Progress(what, end - first, "papers", interval_s=15.0)
    for row in range(first, end, BLOCK):
        stop = min(end, row + BLOCK)
        embeddings[row:stop] = run(encoded[row:stop])
        meter.update(stop - row)
    if meter.count:
        meter.done()


def _with_papers_only_in(old: SearchIndex, papers: pl.DataFrame, model_ref: str, identity: str) -> pl.DataFrame:
    """`papers` plus the papers only `old` holds (its stored abstracts; only their rows are copied out of the memory map):
    another model's vectors are worth nothing, so every paper is encoded again and none is lost."""
    import pyarrow.compute as pc

    only_old = old.papers.filter(pc.invert(pc.is_in(old.papers["id"], value_set=papers["id"].to_arrow())))
    schema = empty_papers().schema
    print(f"search: {old.path} was built with {old.meta['model']} (weights sha256 {old.meta['model_sha256'][:12]}): every "
          f"paper is encoded again with {model_ref} (sha256 {identity[:12]}), {only_old.num_rows} from the index's stored "
          f"abstracts, {papers.height} from --papers", file=sys.stderr, flush=True)
    return pl.concat([papers.select(schema.names()).cast(schema), pl.from_arrow(only_old).select(schema.names()).cast(schema)])


def _planned_papers(plan: pl.DataFrame, papers: pl.DataFrame, old_batches: list[pa.RecordBatch],
                    rows: int = 65536) -> Iterator[pl.DataFrame]:
    """The new index's papers, `rows` at a time: plan row i is the new file's row `new_row`, or where that is null the old
    index's row `row`, taken from its memory-mapped record batches one batch at a time (a take over the whole table
    would copy every stored abstract)."""
    schema = empty_papers().schema
    source = papers.select(schema.names())
    starts = np.cumsum([0] + [batch.num_rows for batch in old_batches])
    for part in plan.with_row_index("position").iter_slices(rows):
        from_new = part.filter(pl.col("new_row").is_not_null())
        from_old = part.filter(pl.col("new_row").is_null()).sort("row")  # batch by batch, in the order they are taken
        pieces = [source[from_new["new_row"]].cast(schema).with_columns(from_new["position"])]
        if from_old.height:
            old_rows = from_old["row"].to_numpy()
            owner = np.searchsorted(starts, old_rows, side="right") - 1
            taken = [old_batches[b].take(pa.array(old_rows[owner == b] - starts[b])) for b in np.unique(owner)]
            pieces.append(pl.from_arrow(pa.Table.from_batches(taken)).select(schema.names()).cast(schema)
                          .with_columns(from_old["position"]))
        yield pl.concat(pieces).sort("position").drop("position")


def _appendable_index(path: Path, kept: pl.DataFrame, old_count: int, precision: Precision, new_count: int):
    """The index at `path`, to add new rows to, when every old row is kept in place and the same kind of index
    suits the new size; None: build a new one."""
    import faiss

    # Every old row kept, in place: the trained index's row i is still paper i.
    if not old_count or not (path / "index.faiss").exists() or not np.array_equal(kept["row"].to_numpy(), np.arange(old_count)):
        return None
    meta = _read_meta(path)
    if meta.get("format") != FORMAT or meta["precision"] != precision or new_count > RETRAIN_GROWTH * meta.get("trained_rows", old_count):
        return None
    try:
        index = faiss.read_index(str(path / "index.faiss"))
    except RuntimeError as error:  # damaged (cut off, half copied): a new index from the stored embeddings, no re-encoding
        print(f"search: {path / 'index.faiss'} cannot be read ({first_line(error)}): building it anew",
              file=sys.stderr, flush=True)
        return None
    return index if is_ivf(index) == is_ivf_size(new_count, precision) else None


def encoding_dir(path: Path) -> Path:
    """Where a build saves its encoded chunks: outside the atomic temp folder, so it survives an interruption."""
    return Path(path).parent / f".{Path(path).name}.encoding"


def write_index(path: Path, papers: pl.DataFrame, embeddings: np.ndarray, precision: Precision, model_ref: str, model_sha256: str,
                rescore_multiplier: int = RESCORE_MULTIPLIER, index=None, trained_rows: int | None = None,
                encoder_sha256: str | None = None) -> None:
    """Write an index folder (papers row i = embeddings row i) in one atomic replacement of `path`.
    encoder_sha256: the embeddings are that encoder's own (a model with no adapter; encoder_identity)."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        np.save(tmp / "embeddings.npy", embeddings)
        _write_index_files(tmp, papers.iter_slices(65536), embeddings, precision, model_ref, model_sha256, rescore_multiplier,
                           index, trained_rows, encoder_sha256)


def _write_index_files(folder: Path, papers: Iterable[pl.DataFrame], embeddings: np.ndarray, precision: Precision, model_ref: str,
                       model_sha256: str, rescore_multiplier: int, index, trained_rows: int | None, encoder_sha256: str | None,
                       encoder_vectors: str = "embeddings.npy") -> None:
    """Everything of an index folder but embeddings.npy (already there): the FAISS index, papers, index.json.
    encoder_sha256: every row's vectors from that encoder are in `encoder_vectors` (None: the index records none)."""
    import faiss

    index = make_index(embeddings, precision) if index is None else index
    faiss.write_index(index, str(folder / "index.faiss"))
    empty = empty_papers()
    schema = empty.to_arrow().schema
    with pa.ipc.new_file(str(folder / "papers.arrow"), schema) as writer:
        for part in papers:  # one part at a time: an index's papers never sit in memory twice
            writer.write_table(part.select(empty.columns).to_arrow().cast(schema), max_chunksize=65536)
    meta = {"format": FORMAT, "model": model_ref, "model_sha256": model_sha256, "precision": precision,
            "dimension": int(embeddings.shape[1]), "count": len(embeddings), "text": "abstract",
            "faiss": type(faiss.downcast_index(index)).__name__, "rescore_multiplier": rescore_multiplier,
            "trained_rows": len(embeddings) if trained_rows is None else trained_rows,
            **({"encoder_sha256": encoder_sha256, "encoder_vectors": encoder_vectors} if encoder_sha256 else {})}
    (folder / "index.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
