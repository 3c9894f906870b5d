"""gpu: the GPU profile on a CUDA machine: training throughput, index encoding speed, and quality.

Built to run on a bare GPU image that has torch, transformers and sentence-transformers but none of
the DAG's other tools (no DVC, MLflow, polars or FAISS): it uses the project's own training wiring
(params schema, losses table, trainer arguments, batch samplers) and reads prepared projects'
parquet files with pyarrow.

- throughput: pairs (or texts) per second of SentenceTransformerTrainer steps at model.max_seq_length,
  after warm-up steps, for the profile's losses and batch sizes (issue 11: >= 2,000 pairs/s on one H100).
- encoding: the search index's encoder (embeddings.encode_resumable) on the projects' abstracts;
  projected to the 2.7M-paper snapshot.
- quality: the candidates of `--grid` (lr: GPU_CANDIDATES; objective: OBJECTIVE_CANDIDATES), or
  `--candidate`s, trained on each project's train sample and scored on its *eval* split (category
  NDCG@10, title->abstract NDCG@10, triplet accuracy). One candidate is picked over all projects
  together; its weights are written as an int8 delta from the base model (`--out`), so the project's
  own evaluate stage scores it on the test split elsewhere (`apply` rebuilds the model folder).
  With `--test-vectors`, every candidate (seeds of one, for a spread) writes instead its vectors of the
  texts the test split's headline lenses read, and `score` runs those lenses here, against the base
  model's cached vectors, with evaluate's intervals.

`pack` writes what a run reads (fp16 base model, train samples, eval splits, mined hard negatives, test texts)
into one folder small enough to travel; benchmarks/gpu_lease.sh is the lent machine's whole command.

    python -m benchmarks.gpu_profile pack --model DIR --projects P1 P2 --dest .gpu/pack   # here
    python -m benchmarks.gpu_profile run --model DIR --projects P1 P2 --out OUT            # on the GPU machine
    python -m benchmarks.gpu_profile apply --model DIR --delta OUT/<project> --dest P1/models/finetuned
    python -m benchmarks.gpu_profile score --returned OUT --pack .gpu/pack --projects P1 P2 --dest OUT.json  # after run --test-vectors
"""

from __future__ import annotations

import argparse
import copy
import json
import lzma
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from arxiv_embed import paths
from arxiv_embed.training.losses import MINED, RETAIN
from tests.harness import deep_update

ROOT = Path(__file__).resolve().parents[1]
# The GPU profile: params overrides on top of params.yaml, the same set benchmarks/README.md gives as
# `dvc exp run -S ...` (tests/test_quality.py keeps the two equal). Full fine-tuning, a label-aware
# loss that never takes a same-label negative, title->abstract MNRL alongside so search stays sharp.
# Loss: supcon and its prototype head (temperature and weight pinned to the values measured), picked
# over BatchAll and over mined hard negatives on both dev files' eval splits (OBJECTIVE_CANDIDATES,
# 2026-12-04); lr and retain weight: GPU_CANDIDATES' pick (2026-11-30, under BatchAll); 5 epochs over 3:
# picked among seven `--candidate`s around the profile on both eval splits (2026-12-05). README.
GPU_PROFILE: dict[str, Any] = {"finetune": {
    "mode": "full", "loss": "supcon", "train_data": ["labels"], "temperature": 0.1, "prototype_weight": 1.5,
    "retain_title_abstract": 1.0, "hard_negatives": {"weight": 0.0}, "batch_size": 128,
    "full": {"learning_rate": 5.0e-5, "epochs": 5},
}}
_BATCH_ALL = {"loss": "batch_all"}  # the profile's loss until 2026-12-04 (issue 11's)
# What the quality part compares around the profile (params overrides on top of GPU_PROFILE).
GPU_CANDIDATES: dict[str, dict] = {  # measured under BatchAll
    f"lr{lr:g}-retain{retain:g}": {"finetune": {**_BATCH_ALL, "full": {"learning_rate": lr}, "retain_title_abstract": retain}}
    for lr in (1.0e-5, 2.0e-5, 5.0e-5) for retain in (1.0, 3.0)
}
# Issue 21: the CPU default's label-aware loss (supcon and its prototype head) and the base model's mined
# hard negatives (TripletLoss, weight 1, as `pack` mined them) against BatchAll, on the whole dev files.
_MINED = {"hard_negatives": {"weight": 1.0}}
OBJECTIVE_CANDIDATES: dict[str, dict] = {  # in the order a short lease trains them
    "supcon-mined": {"finetune": _MINED},
    "batch_all": {"finetune": _BATCH_ALL},
    "supcon": {},
    "batch_all-mined": {"finetune": {**_BATCH_ALL, **_MINED}},
    "supcon-mined-lr2e-5": {"finetune": {**_MINED, "full": {"learning_rate": 2.0e-5}}},
}
GRIDS = {"lr": GPU_CANDIDATES, "objective": OBJECTIVE_CANDIDATES}
# Throughput: name -> (finetune overrides, the data kind its rows are, what one row is).
_PAIRS = {"retain_title_abstract": 0.0}  # one pair dataset, one loss
THROUGHPUT: dict[str, tuple[dict, str, str]] = {
    "mnrl title->abstract, batch 512": ({**_PAIRS, "loss": "mnrl", "train_data": ["title_abstract"], "batch_size": 512}, "title_abstract", "pairs"),
    "mnrl abstract->abstract, batch 512": ({**_PAIRS, "loss": "mnrl", "train_data": ["same_label"], "batch_size": 512}, "abstract_pairs", "pairs"),
    "mnrl title->abstract, batch 1024": ({**_PAIRS, "loss": "mnrl", "train_data": ["title_abstract"], "batch_size": 1024}, "title_abstract", "pairs"),
    "mnrl abstract->abstract, batch 1024": ({**_PAIRS, "loss": "mnrl", "train_data": ["same_label"], "batch_size": 1024}, "abstract_pairs", "pairs"),
    "cached_mnrl abstract->abstract, batch 2048 (mini 512)": (
        {**_PAIRS, "loss": "cached_mnrl", "train_data": ["same_label"], "batch_size": 2048, "full": {"mini_batch_size": 512}}, "abstract_pairs", "pairs"),
    "GPU profile: supcon labels + title->abstract MNRL, batch 128": ({}, "profile", "rows"),
}
SNAPSHOT_PAPERS = 2_700_000
# In a packed project (`pack`): the base model's mined hard negatives as row numbers of the train sample.
MINED_FILE = paths.TRIPLETS_DIR / "train_mined_rows.parquet"
# In a packed project: every distinct text the test split's headline lenses read (benchmarks.objectives.held_out).
SCORED_TEXTS = Path("data/test_scored_texts.parquet")
XZ_PRESET = 9  # the packed model's weights: ~30 s here, a second to unpack there
SCRATCH = Path(tempfile.gettempdir()) / "arxiv-embed-gpu-profile"  # trainer folders, encoding chunks: never in --out


def profile_params(overrides: dict, smoke: bool = False):
    """params.yaml + GPU_PROFILE + overrides, validated by the project's schema."""
    from arxiv_embed.params import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    deep_update(raw, copy.deepcopy(GPU_PROFILE))
    deep_update(raw, copy.deepcopy(overrides))
    if smoke:  # a CPU try of the whole script in a minute: short texts, small batches
        raw["model"]["max_seq_length"] = 32
        raw["finetune"]["batch_size"] = min(raw["finetune"]["batch_size"], 8)
        raw["finetune"]["full"].update(mini_batch_size=4, epochs=1)
    return parse_params(raw)


def _table(project: Path, relative: Path, columns: list[str]) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(project / relative, columns=columns).to_pydict()


def _label_ids(labels: list[str]) -> list[int]:
    order = {label: i for i, label in enumerate(sorted(set(labels)))}
    return [order[label] for label in labels]


def train_sets(project: Path, kind: str, limit: int | None = None, mined: bool = False):
    """The trainer's datasets, as training.recipe.trainer_inputs builds them, read with pyarrow (no polars here).

    make_triplets' train sample (train_papers) is where every kind comes from: its title_abstract rows are
    the sample's (title, abstract) pairs in the same order, so the pairs file need not travel. mined: add
    the MINED dataset from `pack`'s mined triplets (rows of the train sample)."""
    from datasets import Dataset, DatasetDict

    papers = _table(project, paths.TRAIN_SAMPLE, ["title", "abstract", "label"])
    cut = slice(0, limit)
    every_id = _label_ids(papers["label"])
    titles, abstracts, ids = papers["title"][cut], papers["abstract"][cut], every_id[cut]
    if kind == "title_abstract":
        return Dataset.from_dict({"anchor": titles, "positive": abstracts})
    if kind == "abstract_pairs":  # abstract -> next paper's abstract: the cost of 128-token texts on both sides
        return Dataset.from_dict({"anchor": abstracts, "positive": abstracts[1:] + abstracts[:1]})
    # As kind_frame("labels"): split's merged rare labels (`other`, data.columns.OTHER; polars is not on the GPU image)
    # are no class to train, so those papers leave the label set and the labels are numbered without it.
    real = [i for i, label in enumerate(papers["label"]) if label != "other"][cut]
    sets = {"labels": Dataset.from_dict({"text": [papers["abstract"][i] for i in real],
                                         "label": _label_ids([papers["label"][i] for i in real])}),
            RETAIN: Dataset.from_dict({"anchor": titles, "positive": abstracts, "label": ids})}
    if mined:
        table = _table(project, MINED_FILE, ["anchor", "positive", "negative"])
        order = list(range(len(table["anchor"])))
        if limit is not None:  # --smoke: 4 rows of each label in turn, so label-grouped batches find pairs
            by_label: dict[int, list[int]] = {}
            for i in order:
                by_label.setdefault(every_id[table["anchor"][i]], []).append(i)
            order = [i for start in range(0, len(order), 4) for rows in by_label.values() for i in rows[start:start + 4]][:limit]
        sets[MINED] = Dataset.from_dict({column: [papers["abstract"][table[column][i]] for i in order] for column in table}
                                        | {"label": [every_id[table["anchor"][i]] for i in order]})
    return DatasetDict(sets)


def step_clock(warmup: int):
    """A TrainerCallback timing steps after `warmup` (CUDA synchronised), for rows/s without start-up cost."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        started = None
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step == warmup:
                self.started = time.perf_counter()
            elif state.global_step > warmup:
                self.steps += 1
                self.seconds = time.perf_counter() - self.started

    return Clock()


def _trainer(params, model, dataset, output_dir: Path, device: str, precision: str, **overrides):
    from sentence_transformers import SentenceTransformerTrainer

    from arxiv_embed.training import recipe, trainer

    args = trainer.training_arguments(params, output_dir, precision, device, eval_strategy="no", save_strategy="no",
                                      load_best_model_at_end=False, disable_tqdm=True, logging_steps=10_000, **overrides)
    names = list(dataset) if isinstance(dataset, dict) else list(params.finetune.train_data)
    weighted = {name: chosen for name, chosen in recipe.weighted_losses(model, params.finetune).items() if name in names}
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=recipe.trainer_loss(weighted))


def trained_model_in_fp32(trainer):
    """The trainer's model without the autocast wrapper that bf16/fp16 training leaves on its forward (accelerate's
    mixed precision): scored and encoded in fp32, as the base model is, so a delta measures the training alone."""
    return trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)


def throughput(model_dir: Path, projects: list[Path], steps: int, warmup: int, smoke: bool, workers: int | None = None) -> dict:
    from datasets import concatenate_datasets

    from arxiv_embed.models import load_model, pick_device, pick_precision

    results = {}
    device = pick_device()
    for name, (overrides, kind, unit) in THROUGHPUT.items():
        params = profile_params({"finetune": overrides}, smoke)
        ft = params.finetune
        precision = pick_precision(ft.full.precision, device)
        limit = 64 if smoke else None
        sets = [train_sets(p, kind, limit) for p in projects]
        dataset = (concatenate_datasets(sets) if kind != "profile"
                   else type(sets[0])({key: concatenate_datasets([s[key] for s in sets]) for key in sets[0]}))
        model = load_model(model_dir, params.model.max_seq_length, device=device)
        clock = step_clock(warmup)
        loader = {} if workers is None else {"dataloader_num_workers": workers}
        trainer = _trainer(params, model, dataset, SCRATCH / "throughput-run", device, precision, max_steps=warmup + steps, **loader)
        trainer.add_callback(clock)
        trainer.train()
        rows_per_step = ft.batch_size  # the profile's batches hold batch_size rows of one dataset each
        rate = clock.steps * rows_per_step / clock.seconds
        results[name] = {"rows_per_s": round(rate, 1), "unit": unit, "batch_size": ft.batch_size, "timed_steps": clock.steps,
                         "dataloader_workers": trainer.args.dataloader_num_workers,
                         "max_seq_length": params.model.max_seq_length, "precision": precision, "device": device}
        print(f"gpu: throughput {name}: {rate:,.0f} {unit}/s ({precision}, {clock.steps} steps after {warmup} warm-up)", flush=True)
        del trainer, model
        _free()
    return results


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encoding(model_dir: Path, projects: list[Path], out: Path, smoke: bool) -> dict:
    from arxiv_embed.models import load_model
    from arxiv_embed.embeddings import encode_resumable

    texts = [t for p in projects for file in (paths.TRAIN_SAMPLE, paths.split_file("eval")) for t in _table(p, file, ["abstract"])["abstract"]]
    texts = texts[:64] if smoke else texts
    model = load_model(model_dir, 128 if not smoke else 32)
    encode_resumable(model, texts[:512], SCRATCH / "encode-warmup", "warmup", batch_size=256, progress=False)
    results = {}
    for batch_size in (64, 256):  # 64: the search CLI's default
        work = SCRATCH / f"encode-{batch_size}"
        started = time.perf_counter()
        encode_resumable(model, texts, work, "bench", batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - started
        shutil.rmtree(work, ignore_errors=True)
        rate = len(texts) / seconds
        results[f"batch {batch_size}"] = {"texts": len(texts), "texts_per_s": round(rate, 1), "device": str(model.device),
                                          "snapshot_minutes": round(SNAPSHOT_PAPERS / rate / 60, 1)}
        print(f"gpu: encoding batch {batch_size}: {rate:,.0f} abstracts/s on {model.device}; "
              f"2.7M papers in {SNAPSHOT_PAPERS / rate / 60:.0f} min", flush=True)
    shutil.rmtree(SCRATCH / "encode-warmup", ignore_errors=True)
    return results


def eval_scores(model, project: Path) -> dict[str, float]:
    """The eval split's category NDCG@10 (other eval papers of the same label are relevant), title->abstract
    NDCG@10 (its own abstract) and triplet accuracy: the selection signal; the test split stays unseen."""
    from sklearn.metrics import ndcg_score

    from arxiv_embed.models import encode

    papers = _table(project, paths.split_file("eval"), ["title", "abstract", "label"])
    triplets = _table(project, paths.training_file("eval", "triplets"), ["anchor", "positive", "negative"])
    abstracts = encode(model, papers["abstract"], batch_size=256, progress=False)
    titles = encode(model, papers["title"], batch_size=256, progress=False)
    labels = np.array(papers["label"])
    n = len(labels)
    similar = abstracts @ abstracts.T
    others = ~np.eye(n, dtype=bool)
    relevant = (labels[:, None] == labels[None, :])[others].reshape(n, n - 1)
    category = ndcg_score(relevant, similar[others].reshape(n, n - 1), k=10)
    title_scores = titles @ abstracts.T
    title_abstract = ndcg_score(np.eye(n), title_scores, k=10)
    a, p, q = (encode(model, triplets[c], batch_size=256, progress=False) for c in ("anchor", "positive", "negative"))
    triplet = float(np.mean((a * p).sum(1) > (a * q).sum(1)))
    return {"category_ndcg@10": float(category), "title_abstract_ndcg@10": float(title_abstract), "triplet_accuracy": triplet}


def _delta(base: dict, tuned: dict) -> dict[str, np.ndarray]:
    """tuned - base per tensor as int8 with one float32 scale per row: 4x smaller than the weights, and
    its rounding error (half a step of a small difference) is far below bf16 training noise."""
    arrays: dict[str, np.ndarray] = {}
    for name, weight in tuned.items():
        if not weight.is_floating_point():
            continue
        diff = (weight.float() - base[name].float()).cpu().numpy()
        rows = diff.reshape(diff.shape[0], -1) if diff.ndim > 1 else diff.reshape(1, -1)
        scale = np.abs(rows).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        arrays[f"{name}::q"] = np.round(rows / scale).astype(np.int8)
        arrays[f"{name}::scale"] = scale.astype(np.float32)
    return arrays


def write_delta(base: dict, tuned: dict, dest: Path) -> list[Path]:
    """The delta in files of at most ~15 MB (the transfer limit of the lent GPU machine)."""
    arrays = _delta(base, tuned)
    parts, current, size = [], {}, 0
    for key, value in arrays.items():
        if size + value.nbytes > 15_000_000 and current:
            parts.append(current)
            current, size = {}, 0
        current[key] = value
        size += value.nbytes
    parts.append(current)
    written = []
    for i, part in enumerate(parts):
        path = dest.parent / f"{dest.name}.part{i}.npz"
        np.savez(path, **part)
        written.append(path)
    return written


def apply_delta(model_dir: Path, delta_prefix: Path, dest: Path, max_seq_length: int | None = None) -> Path:
    """Rebuild a fine-tuned model folder: base weights (rounded to fp16, as the GPU run loaded them) + delta, at the
    token length the run trained and scored at (params.yaml's model.max_seq_length unless given): the base folder's
    own (256 for MiniLM) would let evaluate encode the fine-tuned model at another length than the base."""
    import torch
    from safetensors.torch import load_file, save_file

    from arxiv_embed.models import load_model

    weights = load_file(str(_weights_file(model_dir)))
    arrays: dict[str, np.ndarray] = {}
    for part in sorted(delta_prefix.parent.glob(f"{delta_prefix.name}.part*.npz")):
        arrays.update(dict(np.load(part)))
    if not arrays:
        raise SystemExit(f"{delta_prefix}.part*.npz: no delta files")
    tuned = {}
    for name, weight in weights.items():
        key = _state_key(name, arrays)
        if key is None:  # not trained (an integer buffer such as position_ids)
            tuned[name] = weight
            continue
        diff = arrays[f"{key}::q"].astype(np.float32) * arrays[f"{key}::scale"]
        tuned[name] = weight.to(torch.float16).float() + torch.from_numpy(diff.reshape(weight.shape))
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model_dir, dest)
    save_file({k: v.contiguous() for k, v in tuned.items()}, str(_weights_file(dest)))
    model = load_model(dest, max_seq_length or profile_params({}).model.max_seq_length, device="cpu")
    model.save(str(dest))  # the library writes the length where its version reads it back
    return dest


def _weights_file(model_dir: Path) -> Path:
    return next(p for p in (model_dir / "model.safetensors", model_dir / "0_Transformer" / "model.safetensors") if p.exists())


def _state_key(file_key: str, arrays: dict) -> str | None:
    """The safetensors name (`embeddings.word_embeddings.weight`) -> the SentenceTransformer state-dict name."""
    for key in arrays:
        name = key.rsplit("::", 1)[0]
        if name == file_key or name.endswith("." + file_key):
            return name
    return None


def pack(model_dir: Path, projects: list[Path], dest: Path, candidates: int) -> None:
    """What a GPU run reads, small enough to travel (the lent machine takes 64 MiB): the base model with
    fp16 weights (`widen` restores fp32 there), and per project the train sample and eval split (title,
    abstract, label), the eval triplets, the base model's hard negatives mined here with the DAG's
    own mining (embed_base's cached vectors, finetune.hard_negatives.candidates) as train-sample rows,
    and the texts the test split's lenses read (run --test-vectors encodes them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from arxiv_embed.embeddings import TextVectors
    from arxiv_embed.training import mining
    from benchmarks import objectives

    if dest.exists():
        shutil.rmtree(dest)
    cast_model(model_dir, dest / "model", torch.float16, skip=("README.md", "data_config.json", ".gitattributes", "__pycache__"))
    weights = _weights_file(dest / "model")  # xz takes a tenth off fp16 weights: what lets the test texts travel too
    with weights.open("rb") as plain, lzma.open(weights.with_name(weights.name + ".xz"), "wb", preset=XZ_PRESET) as packed:
        shutil.copyfileobj(plain, packed)
    weights.unlink()

    def write(table: dict[str, list], name: str, relative: Path) -> None:
        (dest / name / relative).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(table), dest / name / relative, compression="zstd", compression_level=19)

    for project in projects:
        name = packed_name(project)
        columns = ["title", "abstract", "label"]
        sample = _table(project, paths.TRAIN_SAMPLE, columns)
        write(sample, name, paths.TRAIN_SAMPLE)
        write(_table(project, paths.split_file("eval"), columns), name, paths.split_file("eval"))
        write(_table(project, paths.training_file("eval", "triplets"), ["anchor", "positive", "negative"]), name, paths.training_file("eval", "triplets"))
        write({"text": objectives.held_out(project, "test", objectives.finetune_params("default"))[1].texts()}, name, SCORED_TEXTS)
        here = Path.cwd()
        try:  # mining reads the project's files by their DAG paths
            os.chdir(project)
            mined = mining.mine_train_split(TextVectors.load(paths.BASE_EMBEDDINGS), candidates)
        finally:
            os.chdir(here)
        row = {abstract: i for i, abstract in enumerate(sample["abstract"])}
        triplets = mined.triplets.to_dict(as_series=False)
        write({column: [row[text] for text in triplets[column]] for column in mining.MINED_COLUMNS}, name, MINED_FILE)
        print(f"gpu pack: {name}: {len(sample['abstract'])} train papers, {mined.describe()}", flush=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"gpu pack: {dest} holds {size / 2**20:.1f} MiB", flush=True)


def packed_name(project: Path) -> str:
    """A project's folder name in the pack: benchmarks quality's dev projects are <file>-all/project."""
    return project.parent.name if project.name == "project" else project.name


def score_returned(returned: Path, pack_dir: Path, projects: list[Path]) -> list[dict]:
    """Each `<project>-<candidate>.npy` of a `run --test-vectors` scored here by the project's own lenses
    on the test split (benchmarks.objectives.score), against the base model's vectors cached by
    `objectives --objectives-prepare`: headline deltas with evaluate's paired-bootstrap intervals."""
    from arxiv_embed.embeddings import TextVectors
    from benchmarks import dev_vectors, objectives

    params = objectives.finetune_params("default")
    known = dev_vectors.known_vectors()
    rows = []
    for project in projects:
        name = packed_name(project)
        texts = _table(pack_dir / name, SCORED_TEXTS, ["text"])["text"]
        data = objectives.held_out(project, "test", params)[1]
        if data.texts() != texts:
            raise SystemExit(f"{pack_dir / name}: packed from other data than {project} reads now: pack again and rerun")
        base = objectives.score(known.subset(texts), data, params)
        for path in sorted(returned.glob(f"{name}-*.npy")):
            tuned = objectives.score(TextVectors(texts, np.load(path).astype(np.float32)), data, params)
            deltas = objectives.deltas(base, tuned, params.shared.seed)
            rows.append({"file": name, "candidate": path.stem[len(name) + 1:], "split": "test",
                         **{key: [round(v, 4) for v in value] for key, value in deltas.items()}})
            print(f"gpu score: {json.dumps(rows[-1])}", flush=True)
    return rows


def widen(model_dir: Path, dest: Path) -> Path:
    """A packed model folder with fp32 weights again (its xz-packed weights unpacked): trainers and encoders
    start from the weights as the DAG loads them."""
    import torch

    packed = next(model_dir.rglob("*.safetensors.xz"), None)
    if packed is None:
        return cast_model(model_dir, dest, torch.float32)
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = Path(scratch) / "model"
        shutil.copytree(model_dir, unpacked, ignore=shutil.ignore_patterns("*.xz"))
        with lzma.open(packed) as source, (unpacked / packed.relative_to(model_dir).with_suffix("")).open("wb") as plain:
            shutil.copyfileobj(source, plain)
        return cast_model(unpacked, dest, torch.float32)


def cast_model(model_dir: Path, dest: Path, dtype: Any, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the model folder (less `skip` patterns) whose floating-point weights are `dtype`."""
    from safetensors.torch import load_file, save_file

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", *skip))
    weights = load_file(str(_weights_file(model_dir)))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
              str(dest / _weights_file(model_dir).relative_to(model_dir)))
    return dest


def quality(model_dir: Path, projects: list[Path], out: Path, smoke: bool, candidates: dict[str, dict] | None = None,
            budget_s: float | None = None, test_vectors: bool = False) -> dict:
    """Each candidate trained on every project's train sample and scored on its eval split; the pick's
    weights written as deltas, or (test_vectors) every candidate's vectors of the packed SCORED_TEXTS
    (fp16: a seed spread's vectors fit the lent machine's 64 MiB of returned files; deltas would not).
    budget_s: start no candidate after this many seconds (a lease is short), so every candidate scored
    has been scored on every project."""
    import torch

    from arxiv_embed.models import encode, load_model, pick_device, pick_precision

    candidates = candidates or GPU_CANDIDATES
    device = pick_device()
    began = time.perf_counter()
    base_model = load_model(model_dir, profile_params({}, smoke).model.max_seq_length, device=device)
    base_state = {k: v.detach().clone().cpu() for k, v in base_model.state_dict().items()}
    scores: dict[str, dict[str, dict]] = {"base": {}}
    states: dict[tuple[str, str], dict] = {}
    # Read once: each candidate encodes the same texts of a project.
    scored_texts = {p.name: _table(p, SCORED_TEXTS, ["text"])["text"] for p in projects} if test_vectors else {}
    for project in projects:
        scores["base"][project.name] = eval_scores(base_model, project)
        print(f"gpu: {project.name} base (eval split): {scores['base'][project.name]}", flush=True)
    for name, overrides in candidates.items():
        if budget_s is not None and len(scores) > 1 and time.perf_counter() - began > budget_s:  # the first always runs
            print(f"gpu: quality budget of {budget_s:.0f} s spent: {name} and later candidates not trained", flush=True)
            break
        params = profile_params(overrides, smoke)
        precision = pick_precision(params.finetune.full.precision, device)
        for project in projects:
            torch.manual_seed(params.shared.seed)
            model = load_model(model_dir, params.model.max_seq_length, device=device)
            sets = train_sets(project, "profile", 64 if smoke else None, mined=bool(params.finetune.hard_negatives.weight))
            started = time.perf_counter()
            trainer = _trainer(params, model, sets, SCRATCH / "quality-run", device, precision, max_steps=2 if smoke else -1)
            trainer.train()
            seconds = time.perf_counter() - started
            model = trained_model_in_fp32(trainer)
            result = eval_scores(model, project)
            if test_vectors:
                vectors = encode(model, scored_texts[project.name], batch_size=256, progress=False)
                np.save(out / f"{project.name}-{name}.npy", vectors.astype(np.float16))
            result["train_s"] = round(seconds, 1)
            result["train_rows_per_s"] = round(sum(len(d) for d in sets.values()) * params.finetune.full.epochs / seconds, 1)
            scores.setdefault(name, {})[project.name] = result
            if not test_vectors:
                states[(name, project.name)] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            print(f"gpu: {project.name} {name}: {result}", flush=True)
            del trainer, model
            _free()
    chosen = pick(scores, [p.name for p in projects])
    for project in projects if not test_vectors else []:
        write_delta(base_state, states[(chosen, project.name)], out / project.name)
    return {"eval_split": scores, "chosen": chosen, "overrides": {**GPU_PROFILE, "candidate": candidates[chosen]}}


def pick(scores: dict[str, dict[str, dict]], projects: list[str], search_loss: float = 0.005) -> str:
    """The candidate with the largest mean category gain over the projects among those that lose at most
    `search_loss` title->abstract NDCG@10 on every project; if none does, the one that loses least."""
    base = scores["base"]

    def gain(name: str, metric: str) -> list[float]:
        return [scores[name][p][metric] - base[p][metric] for p in projects]

    names = [n for n in scores if n != "base"]
    keeps_search = [n for n in names if min(gain(n, "title_abstract_ndcg@10")) >= -search_loss]
    if keeps_search:
        return max(keeps_search, key=lambda n: float(np.mean(gain(n, "category_ndcg@10"))))
    return max(names, key=lambda n: min(gain(n, "title_abstract_ndcg@10")))


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="measure on this machine's GPU")
    go.add_argument("--model", type=Path, required=True, help="the base model's folder")
    go.add_argument("--projects", type=Path, nargs="+", required=True, help="project folders holding data/split and data/triplets")
    go.add_argument("--out", type=Path, required=True)
    go.add_argument("--parts", nargs="+", default=["throughput", "encoding", "quality"], choices=["throughput", "encoding", "quality"])
    go.add_argument("--steps", type=int, default=20, help="throughput: timed steps per setup")
    go.add_argument("--warmup", type=int, default=3)
    go.add_argument("--dataloader-workers", type=int, default=None, help="throughput: tokenising workers (default: finetune's, min(4, cores/2))")
    go.add_argument("--smoke", action="store_true", help="tiny sizes: try the script on a CPU")
    go.add_argument("--budget-s", type=float, default=None, help="quality: start no candidate after this many seconds")
    go.add_argument("--grid", choices=sorted(GRIDS), default="lr", help="quality: the candidates compared (lr: GPU_CANDIDATES; objective: OBJECTIVE_CANDIDATES)")
    go.add_argument("--candidate", action="append", default=[], metavar="NAME=JSON",
                    help='quality: a candidate instead of the built-in grid, e.g. \'e1={"finetune": {"full": {"epochs": 1}}}\' (repeatable)')
    go.add_argument("--test-vectors", action="store_true",
                    help="quality: write every candidate's vectors of the packed test texts (for `score`), not the pick's delta")
    packing = commands.add_parser("pack", help="write what a GPU run reads into one small folder to carry")
    packing.add_argument("--model", type=Path, required=True, help="the base model's folder")
    packing.add_argument("--projects", type=Path, nargs="+", required=True, help="prepared dev projects (embed_base run)")
    packing.add_argument("--dest", type=Path, required=True)
    packing.add_argument("--candidates", type=int, default=None, help="nearest abstracts scanned per anchor (default: params.yaml's)")
    widening = commands.add_parser("widen", help="a packed model folder with fp32 weights")
    widening.add_argument("--model", type=Path, required=True)
    widening.add_argument("--dest", type=Path, required=True)
    apply = commands.add_parser("apply", help="rebuild a fine-tuned model folder from the base and a delta")
    apply.add_argument("--model", type=Path, required=True)
    apply.add_argument("--delta", type=Path, required=True, help="the delta's prefix: OUT/<project name>")
    apply.add_argument("--dest", type=Path, required=True)
    apply.add_argument("--max-seq-length", type=int, default=None, help="the run's token length (default: params.yaml's model.max_seq_length)")
    scoring = commands.add_parser("score", help="score a run --test-vectors's vectors on the test split, here")
    scoring.add_argument("--returned", type=Path, required=True, help="the run's OUT folder")
    scoring.add_argument("--pack", type=Path, required=True, help="the pack the run read")
    scoring.add_argument("--projects", type=Path, nargs="+", required=True, help="the dev projects packed")
    scoring.add_argument("--dest", type=Path, required=True, help="JSON file for the rows")
    args = parser.parse_args(argv)
    if args.command == "score":
        rows = score_returned(args.returned, args.pack, [p.resolve() for p in args.projects])
        args.dest.write_text(json.dumps(rows, indent=1) + "\n")
        return
    if args.command == "apply":
        print(apply_delta(args.model, args.delta, args.dest, args.max_seq_length))
        return
    if args.command == "widen":
        print(widen(args.model, args.dest))
        return
    if args.command == "pack":
        candidates = args.candidates or profile_params({}).finetune.hard_negatives.candidates
        pack(args.model, [p.resolve() for p in args.projects], args.dest, candidates)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    report_file = args.out / "gpu.json"
    for part in args.parts:
        started = time.perf_counter()
        try:
            if part == "throughput":
                report[part] = throughput(args.model, args.projects, 2 if args.smoke else args.steps, 1 if args.smoke else args.warmup, args.smoke,
                                          args.dataloader_workers)
            elif part == "encoding":
                report[part] = encoding(args.model, args.projects, args.out, args.smoke)
            else:
                given = {name: json.loads(overrides) for name, overrides in (c.split("=", 1) for c in args.candidate)}
                report[part] = quality(args.model, args.projects, args.out, args.smoke, given or GRIDS[args.grid], args.budget_s,
                                       args.test_vectors)
        except Exception as exc:  # noqa: BLE001 (one failing part must not cost the others' figures on a lent machine)
            import traceback

            traceback.print_exc()
            report[part] = {"error": repr(exc)}
        report.setdefault("seconds", {})[part] = round(time.perf_counter() - started, 1)
        report_file.write_text(json.dumps(report, indent=1))
    shutil.rmtree(SCRATCH, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
