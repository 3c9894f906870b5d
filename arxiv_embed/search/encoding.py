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


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)  # a chunk file either is complete or is not there


def encode_resumable(model: SentenceTransformer, texts: list[str], work_dir: Path, model_sha256: str, batch_size: int = 64,
                     chunk_size: int = 4096, processes: int | None = None, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings of `texts`, reusing chunks a previous (interrupted) run saved.

    A chunk file is named after its texts and the model (texts_key), so a rerun over the same list, or
    a list that starts the same way, reuses it; anything else in work_dir is simply not read.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(texts), chunk_size)
    paths = [work_dir / f"chunk-{texts_key(model_sha256, texts[start:start + chunk_size])[:24]}.npy" for start in starts]
    chunks: list[np.ndarray | None] = [np.load(path) if path.exists() else None for path in paths]
    done = sum(len(c) for c in chunks if c is not None)
    if done:
        print(f"search: resuming: {done} of {len(texts)} texts already encoded in {work_dir}", file=sys.stderr)
    devices = pool_devices(model, processes) if done < len(texts) else None
    pool = model.start_multi_process_pool(devices) if devices else None
    start_time, encoded = time.perf_counter(), 0
    try:
        for i, start in enumerate(starts):
            if chunks[i] is not None:
                continue
            part = texts[start:start + chunk_size]
            if pool is not None:
                chunks[i] = np.asarray(model.encode(part, pool=pool, batch_size=batch_size, normalize_embeddings=True,
                                                    convert_to_numpy=True), dtype=np.float32)
            else:
                chunks[i] = encode(model, part, batch_size=batch_size, progress=False)
            _save(paths[i], chunks[i])
            encoded += len(part)
            done += len(part)
            if progress:
                rate = encoded / (time.perf_counter() - start_time)
                left = (len(texts) - done) / rate if rate else float("nan")
                print(f"search: encoded {done}/{len(texts)} texts ({rate:.1f}/s on {devices or model.device}, "
                      f"~{left / 60:.1f} min left)", file=sys.stderr, flush=True)
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)
    dimension = model.get_embedding_dimension()
    return np.concatenate([np.empty((0, dimension), dtype=np.float32), *chunks])
