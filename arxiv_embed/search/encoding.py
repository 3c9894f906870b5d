"""Encoding many abstracts for an index: in chunks saved as they finish, so an interrupted build resumes.

Each finished chunk of `chunk_size` texts is written to `work_dir/chunk-<hash of its texts and the
model>.npy`; a rerun loads those and encodes only the rest. The model runs on the GPU
when load_model found one, and on several processes (sentence-transformers' multi-process pool) when
there are several GPUs or `processes` asks for them.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from arxiv_embed.models import encode

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def texts_key(model_sha256: str, texts: list[str]) -> str:
    """What an embedding is valid for: these texts, in this order, encoded by this model."""
    digest = hashlib.sha256(model_sha256.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def pool_devices(model: SentenceTransformer, processes: int | None) -> list[str] | None:
    """Devices for a multi-process pool, or None for one process: all GPUs if >1, else `processes` CPUs."""
    import torch

    if processes is None and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if processes and processes > 1:
        device = model.device.type
        if device == "cuda":
            return [f"cuda:{i % torch.cuda.device_count()}" for i in range(processes)]
        return ["cpu"] * processes
    return None


CHUNK_SIZE = 4096  # texts per saved chunk: what an interruption can lose
PROGRESS_SECONDS = 15.0  # at most one progress line per this many seconds (a 3.8k build must not be silent)


def chunk_paths(texts: list[str], work_dir: Path, model_sha256: str, chunk_size: int) -> list[Path]:
    """The file each chunk of `texts` is saved to, named after its texts and the model (texts_key)."""
    return [Path(work_dir) / f"chunk-{texts_key(model_sha256, texts[start:start + chunk_size])[:24]}.npy"
            for start in range(0, len(texts), chunk_size)]


def saved_count(texts: list[str], work_dir: Path, model_sha256: str, chunk_size: int | None = None) -> int:
    """How many of `texts` an earlier, interrupted run already encoded and saved in work_dir."""
    chunk_size = chunk_size or CHUNK_SIZE
    return sum(len(texts[i * chunk_size:(i + 1) * chunk_size])
               for i, path in enumerate(chunk_paths(texts, work_dir, model_sha256, chunk_size)) if path.exists())


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)  # a chunk file either is complete or is not there


def encode_resumable(model: SentenceTransformer, texts: list[str], work_dir: Path, model_sha256: str, batch_size: int = 64,
                     chunk_size: int | None = None, processes: int | None = None, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings of `texts`, reusing chunks a previous (interrupted) run saved.

    A chunk file is named after its texts and the model (texts_key), so a rerun over the same list, or
    a list that starts the same way, reuses it; anything else in work_dir is simply not read.
    """
    work_dir, chunk_size = Path(work_dir), chunk_size or CHUNK_SIZE
    work_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(texts), chunk_size)
    paths = chunk_paths(texts, work_dir, model_sha256, chunk_size)
    chunks: list[np.ndarray | None] = [np.load(path) if path.exists() else None for path in paths]
    done = sum(len(c) for c in chunks if c is not None)
    if done:
        print(f"search: resuming: {done} of {len(texts)} texts already encoded in {work_dir}", file=sys.stderr)
    devices = pool_devices(model, processes) if done < len(texts) else None
    pool = model.start_multi_process_pool(devices) if devices else None
    start_time = last_report = time.perf_counter()
    encoded = 0

    def report(final: bool = False) -> None:
        nonlocal last_report
        now = time.perf_counter()
        if progress and (final or now - last_report >= PROGRESS_SECONDS):
            last_report = now
            rate = encoded / max(now - start_time, 1e-9)
            left = (len(texts) - done - encoded) / rate if rate else float("nan")
            print(f"search: encoded {done + encoded}/{len(texts)} texts ({rate:.1f}/s on {devices or model.device}, "
                  f"~{left / 60:.1f} min left)", file=sys.stderr, flush=True)

    try:
        for i, start in enumerate(starts):
            if chunks[i] is not None:
                continue
            part = texts[start:start + chunk_size]
            if pool is not None:
                chunks[i] = np.asarray(model.encode(part, pool=pool, batch_size=batch_size, normalize_embeddings=True,
                                                    convert_to_numpy=True), dtype=np.float32)
                encoded += len(part)
            else:  # a few batches per call, so progress can be reported within a chunk
                pieces = []
                for offset in range(0, len(part), 4 * batch_size):
                    pieces.append(encode(model, part[offset:offset + 4 * batch_size], batch_size=batch_size, progress=False))
                    encoded += len(pieces[-1])
                    report()
                chunks[i] = np.concatenate(pieces)
            _save(paths[i], chunks[i])
            report()
        if encoded:
            report(final=True)
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)
    dimension = model.get_embedding_dimension()
    return np.concatenate([np.empty((0, dimension), dtype=np.float32), *chunks])
