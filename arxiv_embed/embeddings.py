"""The one vector layer: texts encoded once, in chunks that survive a kill, looked up by text.

embed_base writes the base model's vectors of every text the later stages read (the train sample's
and the test sample's titles and abstracts, the test triplets) to data/embeddings/base; finetune
(adapter training and hard-negative mining), evaluate_base and, in adapter mode, evaluate read them
instead of encoding again. The search build writes its index through the same chunk writer; with a
model finetune.mode=adapter saved it encodes with the encoder alone and runs the adapter after
(split_adapter), so that a retrained adapter on the same encoder (encoder_identity) encodes nothing.

Chunks: each finished chunk of `chunk_size` texts is saved to `work_dir/chunk-<hash>.npy`, the hash
of its texts and the model (texts_key); a rerun loads those and encodes only the rest. The stages give
each run a work_dir of its own (chunk_folder), deleted once the run's vectors are kept. The model runs
on the GPU when load_model found one, and on several processes (sentence-transformers' pool) when
there are several GPUs or `processes` asks for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from arxiv_embed.errors import UserError
from arxiv_embed.models import encode, is_int8
from arxiv_embed.progress import Progress

if TYPE_CHECKING:
    import polars as pl
    from sentence_transformers import SentenceTransformer

TEXTS_FILE, VECTORS_FILE = "texts.parquet", "vectors.npy"
ENCODER_FILE = "encoder.json"  # the model key the vectors were made with: only the same key reuses them
SLICE = 512  # at most this many texts per encode call inside a chunk: a progress line can come between them
CPU_BATCH_ROWS = 8  # texts per CPU forward pass, always (encode_fixed_shapes); SLICE is a multiple of it
CHUNK_SIZE = 4096  # texts per saved chunk: what an interruption can lose
PROGRESS_SECONDS = 15.0  # at most one progress line per this many seconds
CHUNK_LOCK = "run.lock"  # in a run's chunk folder (chunk_folder): held by each run encoding into it
STOPPED_CHUNK_RUNS_KEPT = 2  # chunk folders of stopped runs kept, so the runs killed last resume when run again


def texts_key(model_sha256: str, texts: list[str]) -> str:
    """What an embedding is valid for: these texts, in this order, encoded by this model."""
    digest = hashlib.sha256(model_sha256.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def refuse_int8_pool(processes: int | None) -> None:
    """int8's quantised layers cannot be sent to a multi-process pool: asking for processes is an error."""
    if processes and processes > 1:
        raise UserError(f"the int8 backend encodes in one process, not {processes}: drop --processes, or use --backend torch")


def pool_devices(model: SentenceTransformer, processes: int | None) -> list[str] | None:
    """Devices for a multi-process pool, or None for one process: all GPUs if >1, else `processes` CPUs.
    An int8 model (CPU-only, and its quantised layers cannot be sent to a pool) encodes in one process."""
    import torch

    if is_int8(model):
        refuse_int8_pool(processes)
        return None
    if processes is None and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if processes and processes > 1:
        if model.device.type == "cuda":
            return [f"cuda:{i % torch.cuda.device_count()}" for i in range(processes)]
        return ["cpu"] * processes
    return None


def chunk_paths(texts: list[str], work_dir: Path, model_sha256: str, chunk_size: int | None = None) -> list[Path]:
    """The file each chunk of `texts` is saved to, named after its texts and the model (texts_key)."""
    chunk_size = chunk_size or CHUNK_SIZE
    return [Path(work_dir) / f"chunk-{texts_key(model_sha256, texts[start:start + chunk_size])[:24]}.npy"
            for start in range(0, len(texts), chunk_size)]


# A chunk being written: `.<chunk name>.tmp-<pid>` (no `chunk-*.npy` glob matches it).
_CHUNK_TEMP = re.compile(r"^\.chunk-.+\.npy\.tmp-(?P<pid>\d+)$")


def _save(path: Path, array: np.ndarray) -> None:
    # Queued experiments share embed_base's chunk folder (kept_between_runs): a temporary of one's own, and the
    # folder made again should another run have removed it empty.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:  # a file object: np.save would append ".npy" to the name
        np.save(handle, array)
    os.replace(tmp, path)  # a chunk file either is complete or is not there


@contextmanager
def chunk_folder(work_dir: Path, model_key: str, texts: list[str], what: str) -> Iterator[Path]:
    """The folder one run's resumable chunks go in (embed_texts' work_dir): `work_dir/run-<hash>`, named after the
    model and every text the run needs, so the same run killed and started again, in any workspace, finds it. Held
    (run_folders) while the block runs. When the block ends without an error, the vectors are kept elsewhere: the
    folder is deleted, and so are stopped runs' folders beyond the STOPPED_CHUNK_RUNS_KEPT newest (runs of other params
    or another model killed earlier, whose chunks nothing else removes); folders of runs still encoding stay."""
    from arxiv_embed.files import remove_if_empty
    from arxiv_embed.processes import process_alive
    from arxiv_embed.run_folders import prune_stopped, remove_unless_held, shared_hold

    work_dir = Path(work_dir)
    folder = work_dir / f"run-{texts_key(model_key, texts)[:16]}"
    with shared_hold(folder, CHUNK_LOCK):
        yield folder
    remove_unless_held(folder, CHUNK_LOCK)  # a run of the same texts still encoding (a twin queued point) keeps it
    pruned = prune_stopped(work_dir, CHUNK_LOCK, STOPPED_CHUNK_RUNS_KEPT)
    for entry in work_dir.iterdir() if work_dir.is_dir() else []:  # chunks of the flat layout before run folders
        temporary = _CHUNK_TEMP.match(entry.name)
        if entry.is_file() and (entry.name.startswith("chunk-") or (temporary and not process_alive(int(temporary["pid"])))):
            entry.unlink(missing_ok=True)
    if pruned:
        print(f"{what}: deleted {len(pruned)} stopped runs' chunks from {work_dir}; the {STOPPED_CHUNK_RUNS_KEPT} "
              "newest stopped runs' stay, so those runs resume", flush=True)
    if left := remove_if_empty(work_dir):
        print(f"{what}: {len(left)} other runs' chunks ({sum(left.values()) / 2**20:,.0f} MiB) stay in {work_dir}: runs "
              f"encoding now, and up to {STOPPED_CHUNK_RUNS_KEPT} stopped ones, which resume from them when run again", flush=True)


def token_batches(texts: list[str], max_tokens: int, token_budget: int) -> list[np.ndarray]:
    """Rows of `texts`, longest first, in batches of about `token_budget` (padded) tokens: short texts
    go in large batches, long ones in small, so a GPU's batches cost alike. ~4 characters a token."""
    order = np.argsort([-len(text) for text in texts], kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = min(max_tokens, len(texts[order[start]]) // 4 + 2)
        size = max(1, token_budget // longest)
        batches.append(order[start:start + size])
        start += size
    return batches


def encode_token_batches(model: SentenceTransformer, texts: list[str], token_budget: int = 65536,
                         meter: Progress | None = None) -> np.ndarray:
    """The GPU encode path: token-budget batches, bf16/fp16 autocast picked by the device
    (models.pick_precision), and the next batch tokenized on a thread while the GPU runs this one."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import torch.nn.functional as F

    from arxiv_embed.models import pick_precision

    device = model.device.type
    precision = pick_precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    batches = token_batches(texts, model.max_seq_length, token_budget)
    vectors = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    if not batches:
        return vectors

    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None  # as encode() applies it

    def tokenize(rows: np.ndarray) -> dict:
        return model.preprocess([texts[row] for row in rows], prompt=prompt)

    model.eval()
    with ThreadPoolExecutor(max_workers=1) as tokenizer, torch.inference_mode():
        pending = tokenizer.submit(tokenize, batches[0])
        for i, rows in enumerate(batches):
            features = pending.result()
            if i + 1 < len(batches):
                pending = tokenizer.submit(tokenize, batches[i + 1])  # overlaps this batch's forward pass
            features = {key: value.to(model.device, non_blocking=True) if hasattr(value, "to") else value for key, value in features.items()}
            with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
                embedding = model(features)["sentence_embedding"]
            vectors[rows] = F.normalize(embedding.float(), dim=-1).cpu().numpy()
            if meter is not None:
                meter.update(len(rows))
    return vectors


def _encode_chunk(model: SentenceTransformer, texts: list[str], batch_size: int, pool: object, meter: Progress) -> np.ndarray:
    """One chunk: one GPU's token-budget batches, a multi-process pool's, or the CPU's fixed shapes."""
    if pool is None and model.device.type == "cuda":
        return encode_token_batches(model, texts, meter=meter)
    if pool is not None:
        vectors = np.asarray(model.encode(texts, pool=pool, batch_size=batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True), dtype=np.float32)
        meter.update(len(texts))
        return vectors
    return encode_fixed_shapes(model, texts, meter)


def encode_fixed_shapes(model: SentenceTransformer, texts: list[str], meter: Progress | None = None) -> np.ndarray:
    """The CPU path: every forward pass is CPU_BATCH_ROWS texts of one token length (the last batch of a length
    filled with copies of its first text), so a text's vector is the same bits whichever texts share its batch.

    CPU kernels pick their blocking by a batch's shape, which moves a vector's last bits (~2e-7; the same 64 titles
    gave other bits at batch sizes 4 and 8 than at 16 or 64). With shapes fixed, a vector kept from another run's
    batch (embed_base's reuse store, an index update) equals a fresh encode, and so do the outputs' hashes.
    Measured on 3,000 texts: as fast as batches of 64 sorted by length (no padding to a batch's longest text)."""
    vectors = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    if not texts:
        return vectors
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None  # as encode() applies it
    lengths = np.asarray(model.preprocess(texts, prompt=prompt)["attention_mask"].sum(dim=1))  # as encode() tokenizes
    order = np.argsort(-lengths, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1)  # longest first: the ETA errs high, not low
    for rows in groups:
        for start in range(0, len(rows), SLICE):  # SLICE is a multiple of CPU_BATCH_ROWS: only a group's last slice pads
            part = rows[start:start + SLICE]
            batch = [texts[i] for i in part] + [texts[part[0]]] * (-len(part) % CPU_BATCH_ROWS)
            vectors[part] = encode(model, batch, batch_size=CPU_BATCH_ROWS, progress=False)[:len(part)]
            if meter is not None:
                meter.update(len(part))
    return vectors


def encode_into(model: SentenceTransformer, texts: list[str], out: np.ndarray, work_dir: Path, model_sha256: str,
                batch_size: int = 64, chunk_size: int | None = None, processes: int | None = None, progress: bool = True,
                what: str = "encode") -> int:
    """Write the L2-normalised float32 embeddings of `texts` into `out` (len(texts) rows; a memory-mapped
    array keeps a 2.7M-paper build off the heap), reusing chunks a previous (interrupted) run saved.
    Returns how many texts came from saved chunks.

    A chunk file is named after its texts and the model (texts_key), so a rerun over the same list, or
    a list that starts the same way, reuses it; anything else in work_dir is simply not read.
    """
    work_dir, chunk_size = Path(work_dir), chunk_size or CHUNK_SIZE
    if len(out) != len(texts):
        raise ValueError(f"{len(texts)} texts but room for {len(out)} vectors")
    work_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for start, path in zip(range(0, len(texts), chunk_size), chunk_paths(texts, work_dir, model_sha256, chunk_size)):
        try:
            out[start:start + chunk_size] = np.load(path)
        except FileNotFoundError:  # not encoded yet (or dropped meanwhile by a run of the same texts that finished)
            todo.append((start, path))
        except (ValueError, EOFError, OSError) as exc:  # cut short or not an array (a full disk, a copy): encoded again
            print(f"{what}: {path} is damaged ({type(exc).__name__}: {exc}); its texts are encoded again", flush=True)
            path.unlink(missing_ok=True)
            todo.append((start, path))
    resumed = len(texts) - sum(len(texts[start:start + chunk_size]) for start, _ in todo)
    meter = Progress(f"{what}: encoded", len(texts) - resumed, "texts", interval_s=PROGRESS_SECONDS if progress else float("inf"))
    if resumed and progress:
        print(f"{what}: resuming: {resumed:,} of {len(texts):,} texts already encoded in {work_dir}", flush=True)
    devices = pool_devices(model, processes) if todo else None
    pool = model.start_multi_process_pool(devices) if devices else None
    try:
        for start, path in todo:
            vectors = _encode_chunk(model, texts[start:start + chunk_size], batch_size, pool, meter)
            _save(path, vectors)
            out[start:start + len(vectors)] = vectors
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)
    if progress and meter.count:
        meter.done()
    return resumed


def encode_resumable(model: SentenceTransformer, texts: list[str], work_dir: Path, model_sha256: str, batch_size: int = 64,
                     chunk_size: int | None = None, processes: int | None = None, progress: bool = True,
                     what: str = "encode") -> np.ndarray:
    """encode_into a new in-memory array: L2-normalised float32 embeddings of `texts`, resumable."""
    return encode_counted(model, texts, work_dir, model_sha256, batch_size, chunk_size, processes, progress, what)[0]


def encode_counted(model: SentenceTransformer, texts: list[str], work_dir: Path, model_sha256: str, batch_size: int = 64,
                   chunk_size: int | None = None, processes: int | None = None, progress: bool = True,
                   what: str = "encode") -> tuple[np.ndarray, int]:
    """encode_resumable, with how many of the texts came from chunks a killed run saved (encode_into)."""
    vectors = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    return vectors, encode_into(model, texts, vectors, work_dir, model_sha256, batch_size, chunk_size, processes, progress, what)


class TextVectors:
    """Vectors of distinct texts, looked up by text: each text is encoded once however many readers use it."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        self.texts, self.vectors = texts, vectors
        self.index = {text: row for row, text in enumerate(texts)}

    def rows(self, texts: Iterable[str]) -> np.ndarray:
        try:
            return np.fromiter((self.index[text] for text in texts), dtype=np.int64)
        except KeyError as missing:
            raise KeyError(f"text not among the {len(self.texts):,} cached ones (rerun embed_base): "
                           f"{str(missing)[:80]}") from None

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        return np.asarray(self.vectors[self.rows(texts)], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self, texts: Iterable[str]) -> str:
        """sha256 of `texts` (in sorted order) and their vectors: what a reader of only these texts depends on."""
        ordered, digest = sorted(set(texts)), hashlib.sha256()
        for text in ordered:
            digest.update(hashlib.sha256(text.encode()).digest())
        rows = self.rows(ordered)
        for start in range(0, len(rows), 65536):  # memory-mapped vectors, a block at a time
            digest.update(np.ascontiguousarray(self.vectors[rows[start:start + 65536]], dtype=np.float32).tobytes())
        return digest.hexdigest()

    def subset(self, texts: list[str]) -> TextVectors:
        """Only `texts` (an in-memory copy): what one reader needs of a large cache."""
        return TextVectors(texts, self(texts))

    def mapped(self, function: Callable[[np.ndarray], np.ndarray], batch: int = 65536) -> TextVectors:
        """The same texts, each vector passed through `function` (an adapter), in batches."""
        parts = [function(np.asarray(self.vectors[start:start + batch])) for start in range(0, len(self.texts), batch)]
        return TextVectors(self.texts, np.concatenate(parts) if parts else self.vectors)

    def save(self, folder: Path, model_key: str | None = None) -> None:
        """model_key: the model and settings that made the vectors, saved beside them (`embed_texts_reusing` reads it)."""
        import polars as pl

        folder.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"text": self.texts}, schema={"text": pl.String}).write_parquet(folder / TEXTS_FILE)
        np.save(folder / VECTORS_FILE, np.ascontiguousarray(self.vectors, dtype=np.float32))
        if model_key is not None:
            (folder / ENCODER_FILE).write_text(json.dumps({"model_key": model_key}) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TextVectors:
        """Memory-mapped: a reader touches only the rows it looks up."""
        cached, vectors = _saved(folder)
        return cls(cached.to_list(), vectors)

    @classmethod
    def load_subset(cls, folder: Path, texts: list[str]) -> TextVectors:
        """Only `texts` of a saved cache (an in-memory copy), found by a join over Arrow strings: no Python lookup
        table of every cached text (millions at the whole snapshot) for the few a reader needs."""
        cached, vectors = _saved(folder)
        rows = _rows_in(texts, cached)
        if rows.null_count():
            missing = texts[rows.is_null().arg_max()]
            raise KeyError(f"text not among the {len(cached):,} cached ones (rerun embed_base): {missing[:80]!r}")
        return cls(texts, np.asarray(vectors[rows.to_numpy().astype(np.int64)], dtype=np.float32))


def _rows_in(texts: list[str], cached: pl.Series) -> pl.Series:
    """Each text's row in `cached` (a "text" column), null where it has none: a hash join over Arrow strings, with no
    Python lookup table of the millions of cached texts a store can hold."""
    import polars as pl

    return (pl.Series("text", texts, dtype=pl.String).to_frame()
            .join(cached.to_frame().with_row_index("row"), on="text", how="left", maintain_order="left")["row"])


def _saved(folder: Path) -> tuple[pl.Series, np.ndarray]:
    """A saved cache's texts and its memory-mapped vectors."""
    import polars as pl

    if not (folder / VECTORS_FILE).exists():
        raise UserError(f"{folder / VECTORS_FILE} is missing: run the stage that writes it (`dvc repro embed_base`)")
    return pl.read_parquet(folder / TEXTS_FILE)["text"], np.load(folder / VECTORS_FILE, mmap_mode="r")


def distinct_texts(columns: Iterable[pl.Series]) -> list[str]:
    """Every distinct text of `columns`, in first-seen order."""
    import polars as pl

    parts = [column.cast(pl.String).alias("text") for column in columns]
    return pl.concat(parts).unique(maintain_order=True).to_list() if parts else []


def embed_texts(model: SentenceTransformer, texts: list[str], work_dir: Path, model_key: str, batch_size: int = 64,
                chunk_size: int | None = None, what: str = "encode") -> TextVectors:
    """`texts` encoded once each (resumable chunks in work_dir), as a lookup table."""
    return TextVectors(texts, encode_resumable(model, texts, work_dir, model_key, batch_size, chunk_size, what=what))


def encode_precision(model: SentenceTransformer, processes: int | None = None) -> str:
    """The precision this module encodes `model` in: fp32 in a multi-process pool (several GPUs: each process runs
    encode() on the fp32 model) and on a CPU; bf16/fp16 autocast in one GPU's token batches."""
    from arxiv_embed import models

    return "fp32" if pool_devices(model, processes) else models.pick_precision("auto", model.device.type)


def encoder_key(folder: Path, max_seq_length: int, backend: str, precision: str) -> str:
    """Everything that makes two runs' vectors of one text the same: the model's files, its settings, the precision
    it encodes in (encode_precision), the libraries and this project's encoding code. Resumed chunks and
    reused vectors are taken only under the same key. Not the model's name: the same files named another way (a
    package, its folder, a Hub id) make the same vectors."""
    import sentence_transformers
    import torch
    import transformers

    from arxiv_embed import models

    code = hashlib.sha256(Path(__file__).read_bytes() + Path(models.__file__).read_bytes()).hexdigest()[:16]
    # The CPU kernels' threads split a product's sums in another order: other last bits (OMP_NUM_THREADS=1 for a queue).
    return json.dumps({"files_sha256": models.files_sha256(folder), "max_seq_length": max_seq_length,
                       "backend": backend, "precision": precision, "code_sha256": code, "threads": torch.get_num_threads(),
                       "libraries": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                                    f"sentence-transformers {sentence_transformers.__version__}"}, sort_keys=True)


def reuse_folder(root: Path, model_key: str) -> Path:
    """Where the vectors of one encoder key are kept for the next run (embed_texts_reusing, keep_for_reuse)."""
    return root / hashlib.sha256(model_key.encode()).hexdigest()[:16]


@contextmanager
def reuse_lock(store: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """Held while a store is read or replaced: queued experiments (`dvc queue start -j 2`) share one store, and a
    folder swapped while another process reads it would pair one run's texts with the other's vectors. The holder finds
    the store recovered: one a run killed between the swap's two renames set aside is back (else read as none)."""
    from filelock import FileLock, Timeout

    from arxiv_embed.files import recover

    store.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(store.parent / f".{store.name}.lock"))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:  # the kernel frees the lock of a process that dies: a live run holds it
        raise UserError(f"{lock.lock_file} has been held for {timeout_s:.0f} s by another run reading or replacing the "
                        "reusable vectors; wait for that run to finish, or stop it") from None
    try:
        recover(store)
        yield
    finally:
        lock.release()


def keep_for_reuse(output: Path, store: Path, max_texts: int = 0, batch: int = 65536) -> int:
    """The output's vectors (texts, vectors, key) as the store the next run reads, followed by those of texts earlier
    runs kept there that this run lacks, newest first, up to `max_texts` texts in all: a seed sweep, or a point run
    again after others, finds every text it shares with any recent run. Returns how many earlier texts were kept.

    When none are (nothing older under the same key, or `max_texts` reached by this run alone), the store is hard
    links to the output's files where the file system allows (no copy; outputs are replaced, never written in
    place); else a new store is written: texts as Arrow columns, vectors appended batch by batch
    (benchmarks/reuse_store.py measures it at the cap)."""
    import shutil

    import polars as pl

    from arxiv_embed.files import atomic_path

    with reuse_lock(store):  # read again, not taken from embed_texts_reusing: a queued run may have replaced it since
        new_texts = pl.read_parquet(output / TEXTS_FILE)["text"]
        model_key = json.loads((output / ENCODER_FILE).read_text(encoding="utf-8"))["model_key"]
        old = _stored(store, model_key) if max_texts > len(new_texts) else None
        rows = None
        if old:  # the store's rows whose texts this run lacks, in its order (an anti join: Arrow strings, no Python ones)
            rows = (old[0].to_frame().with_row_index("row").join(new_texts.to_frame(), on="text", how="anti", maintain_order="left")
                    ["row"].head(max_texts - len(new_texts)))
        with atomic_path(store) as tmp:
            tmp.mkdir(parents=True)
            if rows is None or not len(rows):
                for path in output.iterdir():
                    try:
                        os.link(path, tmp / path.name)
                    except OSError:
                        shutil.copy2(path, tmp / path.name)
                return 0
            old_texts, old_vectors = old
            pl.concat([new_texts, old_texts.gather(rows)], rechunk=False).to_frame("text").write_parquet(tmp / TEXTS_FILE)
            new_vectors, rows = np.load(output / VECTORS_FILE, mmap_mode="r"), rows.to_numpy()
            with open(tmp / VECTORS_FILE, "wb") as kept:  # appended batch by batch: no array of the whole store
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                          "shape": (len(new_vectors) + len(rows), new_vectors.shape[1])}
                np.lib.format.write_array_header_1_0(kept, header)
                for start in range(0, len(new_vectors), batch):
                    kept.write(np.ascontiguousarray(new_vectors[start:start + batch], dtype=np.float32).tobytes())
                for start in range(0, len(rows), batch):
                    kept.write(np.ascontiguousarray(old_vectors[rows[start:start + batch]], dtype=np.float32).tobytes())
            shutil.copy2(output / ENCODER_FILE, tmp / ENCODER_FILE)
            return len(rows)


def prune_reuse_stores(keep: Path, others: int = 2) -> list[Path]:
    """Delete the stores of other encoder keys (another model, its settings, a library or this code's version) but the
    `others` kept most recently: each can hold reuse_max_texts texts' vectors, and a code or library change makes a
    new key. A store another run is reading or replacing (its lock held) stays. Returns what was deleted."""
    import shutil

    from filelock import FileLock, Timeout

    from arxiv_embed.files import modified_time, newest_first, sweep

    if not keep.parent.is_dir():  # no store kept yet (a project that has only encoded with backend int8)
        return []
    sweep(keep.parent)  # what killed writers left (a store half-written, or set aside), of any key: up to a store's size each
    stores = [path for path in keep.parent.iterdir() if path.is_dir() and path != keep and not path.name.startswith(".")]
    listed = {store: modified_time(store) for store in stores}
    deleted = []
    for stale in newest_first(stores)[others:]:
        lock = FileLock(str(stale.parent / f".{stale.name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        try:  # a run of that key may have replaced it since it was listed: then it is the newest, and stays
            if listed[stale] is not None and modified_time(stale) == listed[stale]:
                shutil.rmtree(stale, ignore_errors=True)
                Path(lock.lock_file).unlink(missing_ok=True)  # a stale key's: no run of it is left to wait on it
                deleted.append(stale)
        finally:
            lock.release()
    return deleted


def _stored(store: Path, model_key: str) -> tuple[pl.Series, np.ndarray] | None:
    """The store's texts (an Arrow column: no Python string per text) and memory-mapped vectors, when it was made
    under `model_key`; else None (none yet, another model's, another layout, or damaged)."""
    import polars as pl

    try:
        made_by = json.loads((store / ENCODER_FILE).read_text(encoding="utf-8"))
        if not isinstance(made_by, dict) or made_by.get("model_key") != model_key:
            return None
        texts, vectors = pl.read_parquet(store / TEXTS_FILE)["text"], np.load(store / VECTORS_FILE, mmap_mode="r")
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError):
        return None
    # A row per distinct text, as keep_for_reuse writes them: anything else would misalign texts and vectors.
    return (texts, vectors) if vectors.ndim == 2 and len(texts) == len(vectors) == texts.n_unique() and not texts.has_nulls() else None


def embed_texts_reusing(model: SentenceTransformer, texts: list[str], store: Path, work_dir: Path, model_key: str,
                        batch_size: int = 64, chunk_size: int | None = None, what: str = "encode") -> tuple[TextVectors, int, int]:
    """embed_texts, taking the vectors of every text a previous run kept in `store` (keep_for_reuse) under the same
    encoder key: a rerun for a larger or another sample encodes only its new texts. Returns (vectors, how many were
    reused from the store, how many of the others came from chunks a killed run saved): the rest were encoded now."""
    with reuse_lock(store):  # the vectors are memory-mapped: a later swap leaves this reader's file in place
        old = _stored(store, model_key)
    found = _rows_in(texts, old[0]) if old is not None else None
    reused = 0 if found is None else found.len() - found.null_count()
    if not reused:
        vectors, resumed = encode_counted(model, texts, work_dir, model_key, batch_size, chunk_size, what=what)
        return TextVectors(texts, vectors), 0, resumed
    from_old = found.is_not_null().to_numpy()
    print(f"{what}: {reused:,} of {len(texts):,} texts' vectors reused from {store} (the same model, settings and code); "
          f"encoding the other {len(texts) - reused:,}", flush=True)
    fresh, resumed = encode_counted(model, [text for text, kept in zip(texts, from_old) if not kept], work_dir, model_key,
                                    batch_size, chunk_size, what=what)
    vectors = np.empty((len(texts), old[1].shape[1]), dtype=np.float32)
    vectors[from_old] = old[1][found.drop_nulls().to_numpy().astype(np.int64)]
    vectors[~from_old] = fresh
    return TextVectors(texts, vectors), reused, resumed


def _encoder_end(model: SentenceTransformer) -> int:
    """The position of the base model's Normalize among `model`'s modules: the encoder ends there, an adapter follows."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    modules = list(model._modules.values())
    return next((i for i, module in enumerate(modules) if isinstance(module, Normalize)), len(modules))


def adapter_modules(model: SentenceTransformer, task: str = "document") -> list:
    """The adapter of a model finetune.mode=adapter saved (training/adapter.py attach): the modules
    after the base model's Normalize (its Dense layers and final Normalize); with a query adapter
    (a Router), the route `task` (query | document) takes."""
    from sentence_transformers.sentence_transformer.modules import Router

    modules, first = list(model._modules.values()), _encoder_end(model)
    if first >= len(modules) - 1:
        raise ValueError("this model has no adapter after its encoder (not saved by finetune.mode=adapter)")
    adapter = modules[first + 1:]
    if len(adapter) == 1 and isinstance(adapter[0], Router):
        router = adapter[0]
        return list(router.sub_modules[task if task in router.sub_modules else router.default_route])
    return adapter


def split_adapter(model: SentenceTransformer) -> tuple[SentenceTransformer, list | None]:
    """(its encoder, its documents' adapter) for a model finetune.mode=adapter saved, else (model, None). The
    encoder is a SentenceTransformer over the same module objects up to the base model's Normalize (nothing
    copied): it encodes what the base model does, and the adapter (adapter_function) maps that to the model's vectors."""
    from sentence_transformers import SentenceTransformer

    try:
        adapter = adapter_modules(model)
    except ValueError:
        return model, None
    encoder = SentenceTransformer(modules=list(model._modules.values())[:_encoder_end(model) + 1], device=str(model.device),
                                  prompts=model.prompts, default_prompt_name=model.default_prompt_name)
    return encoder, adapter


def encoder_identity(encoder: SentenceTransformer, backend: str) -> str:
    """sha256 over what makes an encoder's vectors of a text: its modules and their weights (a base model and the
    encoder of an adapter model trained on it share one), its sequence length, tokenizer, default prompt and backend.
    Weights are read from the loaded modules, so int8's quantised ones count as what they are."""
    import torch

    digest = hashlib.sha256(json.dumps({
        "max_seq_length": encoder.max_seq_length, "backend": backend,
        "tokenizer": [type(encoder.tokenizer).__name__, len(encoder.tokenizer)] if encoder.tokenizer is not None else None,
        "prompt": encoder.prompts.get(encoder.default_prompt_name) if encoder.default_prompt_name else None,
        "modules": [type(module).__name__ for module in encoder._modules.values()]}, sort_keys=True).encode())

    def add(value: object) -> None:
        if isinstance(value, torch.Tensor):
            tensor = (value.dequantize() if value.is_quantized else value).detach().cpu().contiguous()
            digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, (tuple, list)):  # a quantised Linear's packed (weight, bias)
            for item in value:
                add(item)
        else:
            digest.update(repr(value).encode())

    for name, value in encoder.state_dict().items():
        digest.update(name.encode())
        add(value)
    return digest.hexdigest()


def adapter_function(modules: list) -> Callable[[np.ndarray], np.ndarray]:
    """A block of the encoder's vectors -> the same block through `modules` (an adapter), on their device."""
    import torch

    device = next((parameter.device for module in modules for parameter in module.parameters()), torch.device("cpu"))

    def run(block: np.ndarray) -> np.ndarray:
        features = {"sentence_embedding": torch.as_tensor(np.ascontiguousarray(block, dtype=np.float32), device=device)}
        with torch.inference_mode():
            for module in modules:
                features = module(features)
        return features["sentence_embedding"].float().cpu().numpy()

    return run


def apply_adapter(modules: list, vectors: TextVectors) -> TextVectors:
    """The fine-tuned model's vectors from the base model's: its adapter modules run on the cached vectors."""
    return vectors.mapped(adapter_function(modules))
