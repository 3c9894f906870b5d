"""finetune.mode=adapter: freeze the encoder, train a small adapter on the cached base vectors.

On a CPU, encoding is nearly all of a fine-tuning step's cost. Here the base model's vectors of the
training texts come from embed_base (arxiv_embed/embeddings.py), encoded once per data version; the adapter then trains for many epochs on those cached vectors in seconds.
The adapter is made of sentence-transformers' own `Dense` modules, appended to the base model's
modules with a final `Normalize`, so `SentenceTransformer(path)` loads the saved model as usual.

Every adapter starts as the identity (the fine-tuned model equals the base model at step 0):
- `linear`: x + W x with W = 0 (a residual `Dense`).
- `mlp`: W2 relu(W1 x) with W1 = [I; -I; 0] and W2 = [I, -I, 0], because relu(x) - relu(-x) = x.
  The extra hidden units add capacity a linear map lacks (a linear map cannot help the linear
  classifier of the classification lens).
The adapter saved is a moving average of the weights over the steps (finetune.adapter.ema_decay):
on both dev files it keeps the last step's category gains and loses less title->abstract search.

With finetune.adapter.query_adapter, queries (the titles of title->abstract pairs in training; search
queries and the title lens after) get an adapter of their own, saved in sentence-transformers' `Router`
(`model.encode_query` routes through it; `encode` and `encode_document` through the documents' one).
Search then no longer pins the documents' adapter: the titles' map meets the abstracts where the label
terms move them.

With finetune.adapter.members > 1, that many adapters train with different seeds and are merged into
one that outputs their mean (merge_members: for the MLP, one MLP k times as wide), so the saved model has
the same modules; averaging removes part of each run's seed noise (benchmarks/README.md, "A ninth search").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from arxiv_embed.errors import TrainingSetupError
from arxiv_embed.progress import Progress
from arxiv_embed.training.losses import COUNT_OF_KIND, RETAIN, batch_sampler

if TYPE_CHECKING:
    import threading

    import torch
    from sentence_transformers import SentenceTransformer
    from torch import nn
    from torch.optim.swa_utils import AveragedModel

ADAPTERS = ("linear", "mlp")
# Objectives whose first column is a query (a title) and the rest documents: with a query adapter, that
# column goes through it.
QUERY_FIRST = ("title_abstract", RETAIN)


def identity_adapter(dim: int, kind: str, extra_hidden: int, seed: int = 0) -> list[nn.Module]:
    """`Dense` modules that start as the identity on `dim`-d embeddings (module docstring)."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    if kind == "linear":
        return [Dense(dim, dim, bias=True, activation_function=None, use_residual=True,
                      init_weight=torch.zeros(dim, dim), init_bias=torch.zeros(dim))]
    if kind != "mlp":
        raise ValueError(f"unknown adapter {kind!r}: choose one of {ADAPTERS}")
    eye = torch.eye(dim)
    # Small random rows for the extra units: they start silent in the output (W2's zero columns)
    # but get gradients, so the adapter can grow features that no linear map of x has.
    extra = torch.randn(extra_hidden, dim, generator=torch.Generator().manual_seed(seed)) / dim**0.5
    first = Dense(dim, 2 * dim + extra_hidden, bias=True, activation_function=torch.nn.ReLU(),
                  init_weight=torch.cat([eye, -eye, extra]), init_bias=torch.zeros(2 * dim + extra_hidden))
    second = Dense(2 * dim + extra_hidden, dim, bias=True, activation_function=None,
                   init_weight=torch.cat([eye, -eye, torch.zeros(dim, extra_hidden)], dim=1), init_bias=torch.zeros(dim))
    return [first, second]


def merge_members(members: list[list[nn.Module]]) -> list[nn.Module]:
    """One adapter computing the mean of the members' outputs (before normalisation): the members are
    identity adapters of one kind trained with different seeds. Linear: the mean of their weights. MLP: the
    first layers' units side by side, the second layers' columns side by side, scaled by 1/k, so the saved
    model keeps its two Dense modules, only wider (k x the hidden units). Exact, not an approximation."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    if len(members) == 1:
        return members[0]
    k = len(members)
    if len(members[0]) == 1:  # linear: x + Wx + b
        (weights, biases) = zip(*[(m[0].linear.weight, m[0].linear.bias) for m in members])
        dim = weights[0].shape[0]
        return [Dense(dim, dim, bias=True, activation_function=None, use_residual=True,
                      init_weight=torch.stack(weights).mean(0).detach(), init_bias=torch.stack(biases).mean(0).detach())]
    firsts, seconds = [m[0].linear for m in members], [m[1].linear for m in members]
    dim, hidden = firsts[0].in_features, sum(f.out_features for f in firsts)
    first = Dense(dim, hidden, bias=True, activation_function=torch.nn.ReLU(),
                  init_weight=torch.cat([f.weight for f in firsts]).detach(), init_bias=torch.cat([f.bias for f in firsts]).detach())
    second = Dense(hidden, dim, bias=True, activation_function=None,
                   init_weight=torch.cat([s.weight for s in seconds], dim=1).detach() / k,
                   init_bias=torch.stack([s.bias for s in seconds]).mean(0).detach())
    return [first, second]


class AdapterStack:
    """The adapter as a torch module on cached vectors: normalize(adapter(x))."""

    def __init__(self, modules: list[nn.Module]) -> None:
        import torch

        self.net = torch.nn.ModuleList(modules)

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        features = {"sentence_embedding": vectors}
        for module in self.net:
            features = module(features)
        return F.normalize(features["sentence_embedding"], dim=-1)

    def parameters(self):
        return self.net.parameters()


def weight_average(net: nn.Module, decay: float) -> AveragedModel | None:
    """torch's AveragedModel keeping an exponential moving average (Polyak averaging) of `net`'s weights,
    or None when decay is 0. The decay warms up as min(decay, (1 + t) / (10 + t)) at update t, so a short
    run (few steps: small data) is not averaged toward its first steps."""
    if not decay:
        return None
    import torch
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        weight = min(decay, (1 + float(updates)) / (10 + float(updates)))
        for average, value in zip(averaged, current):
            average.lerp_(value, 1 - weight)

    return AveragedModel(net, multi_avg_fn=update)


def attach(model: SentenceTransformer, modules: list[nn.Module], query_modules: list[nn.Module] | None = None) -> SentenceTransformer:
    """The base model's modules + the adapter + Normalize: one SentenceTransformer to save and load.
    With query_modules, the two adapters sit in a Router after the shared encoder (documents by default)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Router

    base = list(model._modules.values())
    if not any(isinstance(module, Normalize) for module in base[-1:]):
        base.append(Normalize())  # the adapter was trained on normalised base embeddings
    head = [*modules, Normalize()]
    if query_modules is not None:
        head = [Router.for_query_document(query_modules=[*query_modules, Normalize()], document_modules=head, default_route="document")]
    # Every route keeps the one prompt embed_base encoded the trained texts with (the base's default, or none): encode()
    # and encode_query() then give what evaluate scored, not the prompt-less (or query-prompted) vectors of other texts.
    prompt = model.prompts.get(model.default_prompt_name, "") if model.default_prompt_name else ""
    return SentenceTransformer(modules=[*base, *head], device=str(model.device), prompts={"query": prompt, "document": prompt},
                               default_prompt_name="document" if prompt else None, similarity_fn_name=model.similarity_fn_name)


def too_small(labels: np.ndarray, per_label: int) -> tuple[int, int]:
    """(labels, papers) of the labels with fewer than per_label papers: they make no label-grouped chunk (Batches), so
    the label terms never see them."""
    counts = np.unique(labels, return_counts=True)[1]
    return int((counts < per_label).sum()), int(counts[counts < per_label].sum())


@dataclass
class Batches:
    """Index batches over cached rows: label-grouped (k papers of each of several labels, the
    GROUP_BY_LABEL idea) or plain shuffled ones, reshuffled every epoch, seeded."""

    labels: np.ndarray | None
    size: int
    rng: np.random.Generator
    per_label: int = 2
    # How often each label's papers come, an epoch: proportional (each paper once), sqrt or balanced
    # (chunks per label ~ count^0.5 or equal, the same total: rare labels repeat, frequent ones are subsampled).
    label_sampling: str = "proportional"
    _groups: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.labels is not None:
            self._groups = [np.flatnonzero(self.labels == value) for value in np.unique(self.labels)]
            self._groups = [g for g in self._groups if len(g) >= self.per_label]  # too_small() reports the others

    def cycle(self, n_rows: int) -> Iterator[np.ndarray]:
        """Plain batches without end: a new shuffle whenever an epoch runs out (fewer rows than a
        batch: all of them, each time)."""
        if n_rows == 0:
            raise ValueError("no rows to draw batches from")
        while True:
            if n_rows < self.size:
                yield self.rng.permutation(n_rows)
            else:
                yield from self.epoch(n_rows)

    def epoch(self, n_rows: int) -> Iterator[np.ndarray]:
        if self.labels is None:
            order = self.rng.permutation(n_rows)
            yield from (order[i : i + self.size] for i in range(0, n_rows - self.size + 1, self.size))
            return
        # Every label's papers in shuffled chunks of exactly per_label (a remainder waits for the next
        # epoch's shuffle); chunks shuffled and packed into batches, so a batch never holds a lone paper.
        chunks = [chunk for g, n in zip(self._groups, self._chunks_per_label()) for chunk in self._draw(g, n)]
        order = self.rng.permutation(len(chunks))
        per_batch = max(1, self.size // self.per_label)
        for i in range(0, len(order) - per_batch + 1, per_batch):
            batch = np.concatenate([chunks[j] for j in order[i : i + per_batch]])
            # sqrt/balanced repeat a rare label's papers: two of its chunks in one batch may share one, which supcon
            # would take as its own positive. Each row once (proportional sampling never repeats: the batch as drawn).
            yield batch[np.sort(np.unique(batch, return_index=True)[1])]

    def per_epoch(self, n_rows: int) -> int:
        """How many batches epoch(n_rows) yields (drawing none: the seeded order is untouched)."""
        if self.labels is None:
            return n_rows // self.size
        return sum(self._chunks_per_label()) // max(1, self.size // self.per_label) if self._groups else 0

    def _chunks_per_label(self) -> list[int]:
        """Chunks of per_label papers each label gives an epoch, by label_sampling (the same total)."""
        full = np.array([len(g) // self.per_label for g in self._groups])
        if self.label_sampling == "proportional":
            return full.tolist()
        weights = np.sqrt(full) if self.label_sampling == "sqrt" else np.ones(len(full))
        return np.maximum(1, np.round(weights / weights.sum() * full.sum())).astype(int).tolist()

    def _draw(self, group: np.ndarray, n: int) -> np.ndarray:
        """n chunks of per_label of the group's rows: shuffled passes over it, each cut into whole chunks (a pass's
        remainder waits for the next), so no chunk holds a row twice and a row repeats only once every row has come."""
        k = self.per_label
        whole = len(group) // k * k
        passes = -(-n // (whole // k))
        return np.concatenate([self.rng.permutation(group)[:whole].reshape(-1, k) for _ in range(passes)])[:n]


def without_repeats(rows: np.ndarray, columns: list) -> np.ndarray:
    """The batch's rows, less every row with a text an earlier row of the batch has (in any column)."""
    seen, keep = set(), []
    for row in rows.tolist():
        texts = {int(column[row]) for column in columns}
        if not texts & seen:
            keep.append(row)
            seen |= texts
    return np.asarray(keep, dtype=np.int64)


@dataclass
class AdapterRun:
    modules: list  # the trained Dense modules, to attach() to the base model
    query_modules: list | None  # the queries' own adapter (finetune.adapter.query_adapter), else None
    curve: list[tuple[int, float]]  # (step, loss)
    steps: int
    train_seconds: float  # the adapter's own training, after the one encoding pass


def _columns(frame, text_columns: list[str], index: dict[str, int]):
    import torch

    return [torch.tensor(frame[c].replace_strict(index, return_dtype=None).to_numpy()) for c in text_columns]


def text_columns(frame) -> list[str]:
    import polars as pl

    return [c for c in frame.columns if frame[c].dtype == pl.String]


MEMBER_SEED_STEP = 1000  # member i trains with seed + 1000 i: runs of nearby seeds (1, 2) share no member


def train_members(ft, seed: int, recipe: list, index: dict[str, int], cached: np.ndarray) -> AdapterRun:
    """finetune.adapter.members adapters (train_adapter with seeds seed, seed + 1000, ...) merged into one
    (merge_members), trained side by side on the machine's cores. The curve is the members' mean loss at each
    step, steps are one member's (each member runs as many), seconds the wall time."""
    import copy
    import dataclasses
    import os
    import threading
    import time
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    import torch

    for objective in recipe:  # once, not once per member
        if objective.name == "labels" and objective.name in ft.train_data:
            labels, papers = too_small(objective.data[objective.data.columns[-1]].to_numpy(), ft.adapter.per_label)
            if labels:
                print(f"finetune: {labels} label(s) with fewer than finetune.adapter.per_label={ft.adapter.per_label} train "
                      f"papers ({papers} of {objective.data.height:,} papers) make no label-grouped chunk: the 'labels' "
                      "terms leave them out (lower per_label, or train on more papers)", flush=True)
    k = ft.adapter.members
    if k == 1:
        return train_adapter(ft, seed, recipe, index, cached)
    stop = threading.Event()

    def member(i: int) -> AdapterRun:
        # Its own copy of the losses: supcon's prototypes are state, and the members run at the same time.
        own = [dataclasses.replace(o, loss=copy.deepcopy(o.loss)) for o in recipe]
        return train_adapter(ft, seed + MEMBER_SEED_STEP * i, own, index, cached, f"finetune: adapter steps (member {i + 1} of {k})", stop)

    # A step's ops are too small to split across threads (train_adapter), but whole members run side by side:
    # torch releases the GIL inside its kernels. One thread each, set here, so no member's exit resets it for the others.
    threads, started = torch.get_num_threads(), time.monotonic()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(k, os.cpu_count() or 1), thread_name_prefix="adapter-member") as pool:
            futures = [pool.submit(member, i) for i in range(k)]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                if failed := [future.exception() for future in done if future.exception() is not None]:
                    raise failed[0]
                runs = [future.result() for future in futures]
            except BaseException:  # Ctrl-C/SIGTERM (the main thread) or a member's error: stop the others at their next step
                stop.set()
                raise
    finally:
        torch.set_num_threads(threads)
    curve = [(points[0][0], float(np.mean([loss for _, loss in points]))) for points in zip(*(run.curve for run in runs))]
    queries = merge_members([run.query_modules for run in runs]) if runs[0].query_modules is not None else None
    return AdapterRun(merge_members([run.modules for run in runs]), queries, curve, runs[0].steps, time.monotonic() - started)


def train_adapter(ft, seed: int, recipe: list, index: dict[str, int], cached: np.ndarray,
                  what: str = "finetune: adapter steps", stop: threading.Event | None = None) -> AdapterRun:
    """Train an identity adapter on the cached base vectors with the recipe's objectives
    (training/recipe.py, losses built on None: each library loss's compute_loss_from_embeddings):
    one epoch walks each main objective (a train_data kind) in batches, label-grouped for `labels`,
    and adds one batch of every other objective (retained title->abstract pairs, mined triplets)
    times its weight; plus, adapter only, squared error to the base embeddings of the main batch's
    first column and of the retained titles (finetune.adapter.retain_distill, the library MSELoss's objective).
    The adapter returned is the moving average of its weights over the steps (finetune.adapter.ema_decay)
    when that is above 0, else the last step's. With finetune.adapter.query_adapter the titles of
    title->abstract pairs go through a second identity adapter (the queries'), trained alongside.

    index/cached: TextVectors' index and vectors (embed_base's cache) over every text of the recipe.
    """
    import time

    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for objective in recipe:  # a loss with state of its own (supcon's prototypes) starts afresh in every run
        if callable(reset := getattr(objective.loss, "reset", None)):
            reset()
    vectors = torch.as_tensor(cached)
    dim, kind, extra_hidden = vectors.shape[1], ft.adapter.kind, ft.adapter.extra_hidden
    stack = AdapterStack(identity_adapter(dim, kind, extra_hidden, seed))
    # Only a title->abstract term trains the queries' adapter: without one (retain_title_abstract 0, an
    # ablation) queries share the documents' adapter and the model has no Router.
    own_queries = ft.adapter.query_adapter and any(o.name in QUERY_FIRST for o in recipe)
    if ft.adapter.query_adapter and not own_queries:
        print("finetune: finetune.adapter.query_adapter without title->abstract pairs to train it: queries share the documents' adapter", flush=True)
    query = AdapterStack(identity_adapter(dim, kind, extra_hidden, seed + 1)) if own_queries else stack
    nets = torch.nn.ModuleDict({"document": stack.net, **({"query": query.net} if own_queries else {})})
    optimizer = torch.optim.AdamW(nets.parameters(), lr=ft.adapter.learning_rate, weight_decay=0.0)
    distill = ft.adapter.retain_distill
    averaged = weight_average(nets, ft.adapter.ema_decay)

    def embed(objective, columns: list, rows: torch.Tensor) -> list[torch.Tensor]:
        """The objective's columns at `rows` through the adapter: a query column through the queries' one."""
        return [(query if i == 0 and objective.name in QUERY_FIRST else stack)(vectors[column[rows]]) for i, column in enumerate(columns)]

    def rows_of(objective) -> tuple[list, torch.Tensor | None]:
        """Its text columns as row numbers into `cached`, and its label/score column, if any."""
        texts = text_columns(objective.data)
        last = objective.data.columns[-1]
        return _columns(objective.data, texts, index), (torch.tensor(objective.data[last].to_numpy()) if last not in texts else None)

    main = [(o, *rows_of(o)) for o in recipe if o.name in ft.train_data]
    extra = [(o, *rows_of(o)) for o in recipe if o.name not in ft.train_data]
    # MNRL (the main loss, or the retained title->abstract term) takes every other row's text as a negative: a text twice
    # in a batch would be its own negative. Mode full has the library's no-duplicates sampler; here rows are dropped.
    in_batch_negatives = {RETAIN} | (set(ft.train_data) if batch_sampler(ft) == "no_duplicates" else set())
    batches_of, steps_per_epoch = {}, 0  # a main objective's batches: each epoch a fresh draw from the same groups
    for objective, columns, labels in main:
        by_label = objective.name == "labels"
        batches_of[objective.name] = Batches(labels.numpy() if by_label else None, ft.batch_size, rng, ft.adapter.per_label,
                                             ft.adapter.label_sampling)
        steps_per_epoch += (steps := batches_of[objective.name].per_epoch(len(columns[0])))
        if not steps:  # else the run takes 0 steps and ships the untrained identity adapter
            knobs = f"finetune.batch_size={ft.batch_size}" + (f" with finetune.adapter.per_label={ft.adapter.per_label}" if by_label else "")
            more = (f"raise make_triplets.{COUNT_OF_KIND[objective.name]}.train" if objective.name in COUNT_OF_KIND else
                    "train on more papers (more records, or a higher make_triplets.max_train_papers where it caps the train sample)")
            raise TrainingSetupError(f"{knobs} makes no batch of the {len(columns[0]):,} train rows of its {objective.name!r} "
                                     f"objective: lower them, or {more}")

    # Batches of 32 x 384 are too small to split across threads: on a shared CPU extra threads only
    # wait on each other (measured: 470-540 s with the default threads vs 50-90 s with one, load 15).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        curve, step, t0 = [], 0, time.monotonic()
        meter = Progress(what, ft.adapter.epochs * steps_per_epoch, "steps")
        for _ in range(ft.adapter.epochs):
            for objective, columns, labels in main:
                grouped = batches_of[objective.name]
                plain = Batches(None, ft.batch_size, rng)
                others = [(o, cols, plain.cycle(len(cols[0]))) for o, cols, _ in extra]
                distinct = objective.name in in_batch_negatives
                for rows in grouped.epoch(len(columns[0])):
                    if stop is not None and stop.is_set():
                        raise KeyboardInterrupt("another adapter member stopped")
                    rows = torch.as_tensor(without_repeats(rows, columns) if distinct else rows)
                    embeddings = embed(objective, columns, rows)
                    loss = objective.weight * objective.loss.compute_loss_from_embeddings(embeddings, labels[rows] if labels is not None else None)
                    for other, cols, batches in others:
                        picked = next(batches)
                        picked = torch.as_tensor(without_repeats(picked, cols) if other.name in in_batch_negatives else picked)
                        embedded = embed(other, cols, picked)
                        if other.name == RETAIN and distill:  # titles too: left free, they drift from their abstracts (measured)
                            loss = loss + distill * F.mse_loss(embedded[0], vectors[cols[0][picked]], reduction="sum") / len(picked)
                        loss = loss + other.weight * other.loss.compute_loss_from_embeddings(embedded, None)
                    if distill:
                        # The library's MSELoss objective (mean squared error to the base embedding), per dimension summed.
                        loss = loss + distill * F.mse_loss(embeddings[0], vectors[columns[0][rows]], reduction="sum") / len(rows)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    if averaged is not None:
                        averaged.update_parameters(nets)
                    step += 1
                    curve.append((step, loss.item()))
                    meter.update()
        meter.done()
    finally:
        torch.set_num_threads(threads)
    trained = averaged.module if averaged is not None else nets
    return AdapterRun(list(trained["document"]), list(trained["query"]) if "query" in trained else None, curve, step, time.monotonic() - t0)
