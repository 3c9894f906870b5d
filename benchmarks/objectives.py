"""objectives: choose the adapter's training objective on cached vectors, and the learning curve.

benchmarks/dev_vectors.py runs each whole dev file through the real DAG up to embed_base (in the
project `quality --quality-workdir benchmarks/results/dev` keeps) and encodes the eval split's texts
too: every title and abstract ONCE with the base model (the expensive part).
Every candidate here then trains the adapter on the stage's one recipe (training/recipe.objectives,
training/adapter.train_members: the stage's own code) on those vectors in seconds and is scored by the project's own lenses (evaluation/lenses.py) with
evaluate's paired-bootstrap intervals (evaluation/report.compare):

- `--objectives-split eval`: candidates compared on the EVAL split of each file (choosing);
- `--objectives-split test`: the chosen ones reported on the TEST split, with a seed spread;
- `--objectives-curve [N ...]`: the learning curve, deltas with intervals vs train papers (nested
  prefixes of a seeded shuffle of the train split), written to benchmarks/learning_curve/<file>.csv
  (dvc.yaml's `dev_learning_curve` plot: `dvc plots show`);
- `--objectives-pooled`: also the two dev files pooled as one (21k train papers: the curve's 20k point);
- `--objectives-probes C [C ...]`: rows also carry the macro-F1 (supported) delta of logistic regressions given
  EVERY train paper at each regularisation C (the lens's probe: 2,000 label-balanced train papers, C 1), so a
  classification gain can be told from the probe's shortage of labelled papers.

    python -m benchmarks objectives --objectives-prepare --objectives-pooled   # DAG to embed_base (this code) + the eval split
    python -m benchmarks objectives --objectives-candidates default first-retain4 first-balanced
    python -m benchmarks objectives --objectives-split test --objectives-candidates default --objectives-seeds 42 1 2
    python -m benchmarks objectives --objectives-split test --objectives-curve 500 1000 2000 5000 10000 20000 --objectives-pooled

Rows are appended to benchmarks/results/objectives-<split>[-curve].jsonl (gitignored).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np

from tests.harness import deep_update
from benchmarks.common import RESULTS_DIR
from benchmarks import dev_vectors
from benchmarks.quality import DEV_FILES, TARGETS  # the dev files, and the issue's targets per headline key

# Candidates: name -> finetune overrides of ISSUE_11 (issue 11's default objective), so a candidate means
# the same whatever params.yaml holds; `default` is params.yaml as committed.
ISSUE_11 = {"loss": "batch_all", "batch_size": 32, "temperature": 0.1, "prototype_weight": 0.0, "retain_title_abstract": 2.0,
            "hard_negatives": {"weight": 1.0, "candidates": 30},
            "adapter": {"kind": "mlp", "extra_hidden": 384, "epochs": 5, "learning_rate": 1.0e-3, "per_label": 4, "retain_distill": 2.5, "ema_decay": 0.0,
                        "query_adapter": False, "members": 1}}
NO_MINED = {"hard_negatives": {"weight": 0.0}}
SUPCON_DEFAULT = {"loss": "supcon", "batch_size": 128, "prototype_weight": 1.0, "adapter": {"retain_distill": 5.0}, **NO_MINED}
CANDIDATES: dict[str, dict] = {
    "default": {},
    "batch_all": {},  # issue 11's objective: BatchAll on label-grouped batches + TripletLoss on mined negatives
    "supcon": {"loss": "supcon", **NO_MINED},
    "supcon+mined": {"loss": "supcon", "hard_negatives": {"weight": 1.0}},
    "supcon-t0.05": {"loss": "supcon", "temperature": 0.05, **NO_MINED},
    "supcon-t0.2": {"loss": "supcon", "temperature": 0.2, **NO_MINED},
    "supcon-b128": {"loss": "supcon", "batch_size": 128, **NO_MINED},  # the issue's probe: batch 128, 4 per label
    "supcon-b128-pl8": {"loss": "supcon", "batch_size": 128, "adapter": {"per_label": 8}, **NO_MINED},
    "supcon-10ep": {"loss": "supcon", "adapter": {"epochs": 10}, **NO_MINED},
    "supcon-linear": {"loss": "supcon", "adapter": {"kind": "linear"}, **NO_MINED},
    "supcon-proto0.5": {"loss": "supcon", "prototype_weight": 0.5, **NO_MINED},
    "supcon-proto1": {"loss": "supcon", "prototype_weight": 1.0, **NO_MINED},
    "supcon-proto1-mined": {"loss": "supcon", "prototype_weight": 1.0, "hard_negatives": {"weight": 1.0}},
    # More weight on the no-forgetting terms, to hold title->abstract search.
    "supcon+mined-distill5": {"loss": "supcon", "hard_negatives": {"weight": 1.0}, "adapter": {"retain_distill": 5.0}},
    "supcon+mined-retain4": {"loss": "supcon", "hard_negatives": {"weight": 1.0}, "retain_title_abstract": 4.0},
    "supcon-distill5": {"loss": "supcon", "adapter": {"retain_distill": 5.0}, **NO_MINED},
    "supcon-b128-distill5": {"loss": "supcon", "batch_size": 128, "adapter": {"retain_distill": 5.0}, **NO_MINED},
    "supcon-b128-proto1-distill5": SUPCON_DEFAULT,  # issue 21's first default, chosen on the 8,000-record subsamples
}
# first-<variant>: changes to that first default, compared on the whole dev files (4-6x the train papers it
# was chosen on); first-retain8-ep10 won (with ema 0.99 and the query adapter since: params.yaml's default is
# first-retain8-ep10-ema0.99-q-retain16-proto1.5).
VARIANTS = {
    "distill3": {"adapter": {"retain_distill": 3.0}}, "distill8": {"adapter": {"retain_distill": 8.0}},
    "proto2": {"prototype_weight": 2.0}, "proto0.5": {"prototype_weight": 0.5}, "retain4": {"retain_title_abstract": 4.0},
    "t0.2": {"temperature": 0.2}, "ep3": {"adapter": {"epochs": 3}}, "ep10": {"adapter": {"epochs": 10}},
    "pl8": {"adapter": {"per_label": 8}}, "mined": {"hard_negatives": {"weight": 1.0}}, "lr3e-4": {"adapter": {"learning_rate": 3.0e-4}},
    "sqrt": {"adapter": {"label_sampling": "sqrt"}}, "balanced": {"adapter": {"label_sampling": "balanced"}},
    # Pairs of the single changes that helped on the eval splits (retain 4: search and cs F1; 10 epochs, prototype 2: category and F1).
    "retain4-sqrt": {"retain_title_abstract": 4.0, "adapter": {"label_sampling": "sqrt"}},
    "retain4-balanced": {"retain_title_abstract": 4.0, "adapter": {"label_sampling": "balanced"}},
    "retain4-ep10": {"retain_title_abstract": 4.0, "adapter": {"epochs": 10}},
    "retain4-proto2": {"retain_title_abstract": 4.0, "prototype_weight": 2.0},
    "retain6-ep10": {"retain_title_abstract": 6.0, "adapter": {"epochs": 10}},
    "retain8-ep10": {"retain_title_abstract": 8.0, "adapter": {"epochs": 10}},
    "retain6-ep10-mined": {"retain_title_abstract": 6.0, "adapter": {"epochs": 10}, "hard_negatives": {"weight": 1.0}},
    "retain6-ep10-proto2": {"retain_title_abstract": 6.0, "adapter": {"epochs": 10}, "prototype_weight": 2.0},
    # A second search after the done-when measurement, aimed at its misses (cs category, multidomain search).
    "retain10-ep15": {"retain_title_abstract": 10.0, "adapter": {"epochs": 15}},
    "retain12-ep20": {"retain_title_abstract": 12.0, "adapter": {"epochs": 20}},
    "retain6-ep10-t0.2": {"retain_title_abstract": 6.0, "adapter": {"epochs": 10}, "temperature": 0.2},
}


def changes_to(base: str, changes: dict[str, dict]) -> dict[str, dict]:
    """`<base>-<name>`: the variant `base` with each change applied over it."""
    return {f"{base}-{name}": deep_update(copy.deepcopy(VARIANTS[base]), change) for name, change in changes.items()}


# ...and changes to the chosen default (first-retain8-ep10): temperature, prototype weight, retain weights, mined negatives.
VARIANTS |= changes_to("retain8-ep10", {
    "mined": {"hard_negatives": {"weight": 1.0}}, "t0.2": {"temperature": 0.2}, "t0.3": {"temperature": 0.3},
    "t0.2-mined": {"temperature": 0.2, "hard_negatives": {"weight": 1.0}},
    "t0.2-proto1.5": {"temperature": 0.2, "prototype_weight": 1.5}, "t0.2-proto2": {"temperature": 0.2, "prototype_weight": 2.0},
    "t0.2-proto2-distill8": {"temperature": 0.2, "prototype_weight": 2.0, "adapter": {"retain_distill": 8.0}},
})
VARIANTS |= {f"retain12-ep10-{name}": deep_update(copy.deepcopy(VARIANTS[f"retain8-ep10-{name}"]), {"retain_title_abstract": 12.0})
             for name in ("t0.2-proto2", "t0.2-proto2-distill8")}
# A third search: the adapter saved as the moving average of its weights (finetune.adapter.ema_decay; the default now).
VARIANTS |= {f"{base}-ema{decay}": deep_update(copy.deepcopy(VARIANTS[base]), {"adapter": {"ema_decay": decay}})
             for base, decays in {"retain8-ep10": (0.99, 0.995, 0.998), "retain8-ep10-t0.2": (0.99,), "retain8-ep10-t0.2-proto1.5": (0.99,),
                                  "retain8-ep10-t0.2-proto2": (0.99,), "retain10-ep15": (0.99,), "retain12-ep20": (0.99,)}.items()
             for decay in decays}
# A fourth search: the MLP's capacity (finetune.adapter.extra_hidden) with the weight average.
VARIANTS |= changes_to("retain8-ep10-ema0.99", {
    "h0": {"adapter": {"extra_hidden": 0}}, "h768": {"adapter": {"extra_hidden": 768}}, "h1536": {"adapter": {"extra_hidden": 1536}},
    "h1536-t0.2": {"adapter": {"extra_hidden": 1536}, "temperature": 0.2},
    "h1536-t0.2-proto1.5": {"adapter": {"extra_hidden": 1536}, "temperature": 0.2, "prototype_weight": 1.5},
    "h1536-retain10": {"adapter": {"extra_hidden": 1536}, "retain_title_abstract": 10.0},
    "h1536-retain10-proto1.5": {"adapter": {"extra_hidden": 1536}, "retain_title_abstract": 10.0, "prototype_weight": 1.5},
    "h1536-retain10-ep15": {"adapter": {"extra_hidden": 1536, "epochs": 15}, "retain_title_abstract": 10.0},
    "h1536-retain12": {"adapter": {"extra_hidden": 1536}, "retain_title_abstract": 12.0},
    "h1536-retain14": {"adapter": {"extra_hidden": 1536}, "retain_title_abstract": 14.0},
    "h3072": {"adapter": {"extra_hidden": 3072}},
    "h3072-retain10": {"adapter": {"extra_hidden": 3072}, "retain_title_abstract": 10.0},
})
# A fifth search: the prototype head that lifts cs category, with distillation or larger batches to hold search, under the weight average.
VARIANTS |= changes_to("retain8-ep10-ema0.99", {
    "proto1.5-distill8": {"prototype_weight": 1.5, "adapter": {"retain_distill": 8.0}},
    "t0.2-proto1.5-distill8": {"temperature": 0.2, "prototype_weight": 1.5, "adapter": {"retain_distill": 8.0}},
    "t0.2-proto2-distill8": {"temperature": 0.2, "prototype_weight": 2.0, "adapter": {"retain_distill": 8.0}},
    "t0.2-proto2-distill8-retain12": {"temperature": 0.2, "prototype_weight": 2.0, "adapter": {"retain_distill": 8.0}, "retain_title_abstract": 12.0},
    "b256": {"batch_size": 256}, "b256-pl8": {"batch_size": 256, "adapter": {"per_label": 8}},
    "lr2e-3": {"adapter": {"learning_rate": 2.0e-3}}, "b256-lr2e-3": {"batch_size": 256, "adapter": {"learning_rate": 2.0e-3}},
    "b256-ep20": {"batch_size": 256, "adapter": {"epochs": 20}},
    "b256-ep20-proto1.5": {"batch_size": 256, "prototype_weight": 1.5, "adapter": {"epochs": 20}},
    "b256-lr2e-3-proto1.5": {"batch_size": 256, "prototype_weight": 1.5, "adapter": {"learning_rate": 2.0e-3}},
    "b256-t0.2-proto2": {"batch_size": 256, "temperature": 0.2, "prototype_weight": 2.0},
})
# A sixth search: titles (queries) through an adapter of their own (finetune.adapter.query_adapter; `q` is the default now), so search
# no longer pins the documents' adapter; with more title->abstract weight or a stronger label head.
QUERIES = {"adapter": {"query_adapter": True}}
VARIANTS |= changes_to("retain8-ep10-ema0.99", {
    "q": QUERIES, **{f"q-retain{w}": {**QUERIES, "retain_title_abstract": float(w)} for w in (10, 12, 16, 20)},
    "q-retain16-proto1.5": {**QUERIES, "retain_title_abstract": 16.0, "prototype_weight": 1.5},
    "q-retain16-t0.2-proto1.5": {**QUERIES, "retain_title_abstract": 16.0, "temperature": 0.2, "prototype_weight": 1.5},
})
# A seventh search, over q-retain16-proto1.5: the multidomain triplets (mined negatives, capacity, a stronger head).
VARIANTS |= changes_to("retain8-ep10-ema0.99-q-retain16-proto1.5", {
    "mined": {"hard_negatives": {"weight": 1.0}}, "h1536": {"adapter": {"extra_hidden": 1536}},
    "retain20-proto2": {"retain_title_abstract": 20.0, "prototype_weight": 2.0},
    "retain20-proto2-mined": {"retain_title_abstract": 20.0, "prototype_weight": 2.0, "hard_negatives": {"weight": 1.0}},
    "h1536-retain20-proto2": {"adapter": {"extra_hidden": 1536}, "retain_title_abstract": 20.0, "prototype_weight": 2.0},
    "h3072": {"adapter": {"extra_hidden": 3072}},
})
# An eighth search, over the default, read on the all-pairs triplet signal too (all_pairs_triplets): label sampling, the head's temperature.
VARIANTS |= changes_to("retain8-ep10-ema0.99-q-retain16-proto1.5", {
    "sqrt": {"adapter": {"label_sampling": "sqrt"}}, "balanced": {"adapter": {"label_sampling": "balanced"}},
    "t0.2": {"temperature": 0.2}, "pl8": {"adapter": {"per_label": 8}}, "pl2": {"adapter": {"per_label": 2}},
    "t0.2-h1536": {"temperature": 0.2, "adapter": {"extra_hidden": 1536}},
    "t0.2-h1536-retain20": {"temperature": 0.2, "adapter": {"extra_hidden": 1536}, "retain_title_abstract": 20.0},
    "t0.2-h1536-retain24": {"temperature": 0.2, "adapter": {"extra_hidden": 1536}, "retain_title_abstract": 24.0},
})
# A ninth search, over the default: k adapters of different seeds merged into one that outputs their mean.
VARIANTS |= changes_to("retain8-ep10-ema0.99-q-retain16-proto1.5", {f"members{k}": {"adapter": {"members": k}} for k in (2, 3)})
# A tenth search, over the default (two members): the distillation weight, untested since titles have an adapter of their own.
VARIANTS |= changes_to("retain8-ep10-ema0.99-q-retain16-proto1.5-members2", {
    **{f"distill{w}": {"adapter": {"retain_distill": float(w)}} for w in (1, 2, 3, 4, 8)},
    **{f"distill3-retain{r}": {"adapter": {"retain_distill": 3.0}, "retain_title_abstract": float(r)} for r in (20, 24)}})
# A fourteenth search, over the default (two members): an additive cosine margin in the prototype head (CosFace), alone
# and with more distillation to hold search.
VARIANTS |= changes_to("retain8-ep10-ema0.99-q-retain16-proto1.5-members2", {
    **{f"margin{m}": {"prototype_margin": m} for m in (0.1, 0.25)},
    **{f"margin{m}-distill{w}": {"prototype_margin": m, "adapter": {"retain_distill": float(w)}} for m in (0.1, 0.25) for w in (6, 8)}})
CANDIDATES |= {f"first-{name}": deep_update(copy.deepcopy(SUPCON_DEFAULT), change) for name, change in VARIANTS.items()}
LENS_NAMES = ("triplet", "title_to_abstract", "category_retrieval", "classification")


def finetune_params(name: str):
    from tests.harness import params_with

    overrides = {} if name == "default" else deep_update(copy.deepcopy(ISSUE_11), CANDIDATES[name])
    # Only the classifier on every sampled train paper (the one reported): each learning-curve point is
    # another logistic-regression fit over ~100 labels, minutes on shared cores.
    return params_with({"finetune": overrides, "evaluate": {"learning_curve_sizes": []}})


def recipe_for(project: Path, ft, train_ids: set[str], cached) -> list:
    """The adapter's objectives as finetune builds them (training.recipe.objectives on the frames of
    training.data.train_kinds), restricted to the train papers in `train_ids` (the learning curve),
    with hard negatives mined on them from the cached base vectors (mining.mine_label_negatives, as
    mining.mine_train_split does over the whole train sample)."""
    import polars as pl

    from arxiv_embed import paths
    from arxiv_embed.training import data as training_data
    from arxiv_embed.training import mining, recipe

    cwd = Path.cwd()
    os.chdir(project)  # kind_frame, mining and the recipe read the project's relative paths, as in the stage
    try:
        papers = pl.read_parquet(paths.TRAIN_SAMPLE, columns=["id", "abstract", "label", "categories"])
        keep = papers.filter(pl.col("id").is_in(list(train_ids)))
        abstracts = keep["abstract"].implode()
        frames = {}
        for kind in training_data.train_kinds(ft):
            frame = training_data.kind_frame(kind)
            column = "text" if kind == "labels" else "positive"
            frames[kind] = frame.filter(pl.col(column).is_in(abstracts))
        mined = None
        if ft.hard_negatives.weight:
            pairs = pl.read_parquet(paths.training_file("train", "same_label"), columns=["anchor", "positive", "label"])
            pairs = pairs.filter(pl.col("anchor").is_in(abstracts) & pl.col("positive").is_in(abstracts))
            mined = mining.mine_label_negatives(cached, pairs, keep, ft.hard_negatives.candidates).triplets
        return recipe.objectives(None, ft, frames, mined)
    finally:
        os.chdir(cwd)


def eval_data(project: Path, split: str, train, max_train_papers: int, seed: int):
    """evaluate's EvalData with `split` (eval or test) as the held-out papers and triplets; the
    classifier's balanced slice comes from `train` (the encoded train papers)."""
    import polars as pl

    from arxiv_embed.evaluation.data import EvalData, balanced_sample

    read = lambda name, columns: pl.read_parquet(project / name, columns=columns)  # noqa: E731
    test = read(f"data/split/{split}.parquet", ["id", "title", "abstract", "label"]).sort("id")  # the whole split: no test sample; evaluate's order
    return EvalData(test, balanced_sample(train.select("id", "abstract", "label"), max_train_papers, seed),
                    read(f"data/triplets/{split}_triplets.parquet", ["anchor", "positive", "negative", "negative_type"]), test.height)


def held_out(project: Path, split: str, params):
    """(make_triplets' train sample, what finetune trains on, in a seeded shuffle: the learning curve's
    subsets are its prefixes, so they are nested; eval_data on `split`)."""
    import polars as pl

    from arxiv_embed import paths

    train = pl.read_parquet(project / paths.TRAIN_SAMPLE, columns=["id", "abstract", "title", "label"])
    train = train.sample(fraction=1.0, shuffle=True, seed=params.shared.seed)
    return train, eval_data(project, split, train, params.evaluate.max_train_papers, params.shared.seed)


def score(vectors, data, params, queries=None):
    """The project's own lenses (evaluation/lenses.py) on vectors already computed (a TextVectors; queries:
    the titles' query vectors, with a query adapter): only the headline lenses (evaluate_vectors would run every one)."""
    from arxiv_embed.evaluation.lenses import LENSES, LensInput
    from arxiv_embed.evaluation.report import ModelEval

    x = LensInput(vectors, data, params.evaluate, params.shared.seed, queries)
    return ModelEval.of({name: LENSES[name](x) for name in LENS_NAMES})


def all_pairs_triplets(vectors, papers) -> dict[str, float]:
    """A research signal beside the lens, not a lens: triplet accuracy over EVERY (anchor, same-label
    positive, other-label negative) of the split's papers, averaged over each label's anchors and then over
    labels, as the lens draws its anchors' labels evenly (`other`, the merged rare labels, anchors none).
    The lens's own estimate rests on a draw of 300 (eval) to 1,000 (test) triplets, +-0.02 to 0.04; this
    one has no draw to vary. hard: the negatives of the anchor's archive only, as make_triplets' hard kind."""
    from arxiv_embed.data.columns import OTHER
    from arxiv_embed.search.papers import archive_of

    x = vectors(papers["abstract"].to_list())
    labels = papers["label"].to_numpy()
    archives = np.array([archive_of(label) for label in labels])
    similar = x @ x.T
    per_label: dict[str, dict[str, list[float]]] = {"random": {}, "hard": {}}
    for i, label in enumerate(labels):
        positives = labels == label
        positives[i] = False
        if label == OTHER or not positives.any():
            continue
        others = labels != label
        for kind, negatives in (("random", others), ("hard", others & (archives == archives[i]))):
            if negatives.any():
                below = np.searchsorted(np.sort(similar[i, negatives]), similar[i, positives], side="left")
                per_label[kind].setdefault(label, []).append(float(np.mean(below)) / int(negatives.sum()))
    return {kind: float(np.mean([np.mean(scores) for scores in by_label.values()])) for kind, by_label in per_label.items()}


def probe_pairs(vectors, train, test, min_support: int, c: float, seed: int) -> np.ndarray:
    """A research signal beside the classification lens: (actual, predicted) label ids of the test papers, over
    the lens's supported labels, from a logistic regression of regularisation `c` on EVERY train paper (natural
    label mix). The lens's probe sees 2,000 label-balanced train papers (~18 per label on multidomain) at C 1."""
    from sklearn.linear_model import LogisticRegression

    from arxiv_embed.evaluation.lenses import label_pairs, supported_labels

    actual = test["label"].to_numpy()
    probe = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(vectors(train["abstract"].to_list()), train["label"].to_numpy())
    predicted = probe.predict(vectors(test["abstract"].to_list()))
    supported = supported_labels(actual, min_support)
    return label_pairs(actual, predicted, ignore=(set(actual) | set(predicted)) - supported)


def probe_deltas(base: dict[float, np.ndarray], tuned: dict[float, np.ndarray], seed: int) -> dict[str, list[float]]:
    """"probe_macro_f1.C<c>" -> [delta, 95% low, high], evaluate's paired bootstrap over the test papers."""
    from arxiv_embed.evaluation.report import ModelEval, macro_f1, paired_intervals

    as_eval = lambda pairs: ModelEval({}, {f"probe_macro_f1.C{c:g}": p for c, p in pairs.items()}, {})  # noqa: E731
    intervals = paired_intervals(as_eval(base), as_eval(tuned), seed)
    return {f"probe_macro_f1.C{c:g}": [round(macro_f1(tuned[c]) - macro_f1(base[c]), 4), *(round(v, 4) for v in intervals[f"probe_macro_f1.C{c:g}"])]
            for c in tuned}


def adapted(modules: list, vectors):
    """The fine-tuned vectors: the trained adapter (normalize(adapter(x)), as in training) on the cached base vectors."""
    import torch

    from arxiv_embed.training.adapter import AdapterStack

    stack = AdapterStack(modules)

    def run(block: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return stack(torch.as_tensor(block)).numpy()

    return vectors.mapped(run, batch=8192)


def deltas(base, tuned, seed: int) -> dict[str, tuple[float, float, float]]:
    """headline key -> (delta, 95% low, 95% high): evaluate's compare (paired bootstrap)."""
    from arxiv_embed.evaluation.report import compare
    from arxiv_embed.flat import flatten

    report = compare(base, tuned, seed)
    change = flatten(report["delta"])
    return {key: (change[key], *report["delta_ci95"][key]) for key in TARGETS}


def experiment(source: Path, names: list[str], split: str, seeds: list[int], sizes: list[int | None],
               probes: list[float] = ()) -> list[dict]:
    """One row per (candidate, seed, train size): headline deltas with intervals, on `split`."""
    from arxiv_embed.embeddings import distinct_texts
    from arxiv_embed.training.adapter import train_members

    cached = dev_vectors.cached_vectors(source)
    project = dev_vectors.project(source)
    params = finetune_params("default")
    train, data = held_out(project, split, params)
    order = train["id"].to_list()
    base = score(cached, data, params)
    base_pairs = all_pairs_triplets(cached, data.test)
    probe = lambda vectors, c: probe_pairs(vectors, train, data.test, params.evaluate.min_label_support, c, params.shared.seed)  # noqa: E731
    base_probes = {c: probe(cached, c) for c in probes}
    titles = cached.subset(distinct_texts([data.test["title"]]))  # the title lens's queries
    print(f"objectives: {source.name}: {len(order)} train papers; scoring on {split} ({data.test.height} papers)", flush=True)
    rows = []
    for size in sizes:
        if size is not None and size >= len(order):
            continue  # beyond this file's train split: its last point (every train paper) stands for it
        chosen = set(order if size is None else order[:size])
        for name in names:
            ft = finetune_params(name).finetune
            objectives = recipe_for(project, ft, chosen, cached)
            for seed in seeds:
                started = time.monotonic()
                run = train_members(ft, seed, objectives, cached.index, cached.vectors)
                queries = adapted(run.query_modules, titles) if run.query_modules is not None else None
                documents = adapted(run.modules, cached)
                tuned = score(documents, data, params, queries)
                pairs = all_pairs_triplets(documents, data.test)
                row = {"file": source.name.split(".")[0], "split": split, "candidate": name, "seed": seed,
                       "train_papers": len(chosen), "train_s": round(time.monotonic() - started, 1),
                       **{key: [round(v, 4) for v in value] for key, value in deltas(base, tuned, params.shared.seed).items()},
                       **{f"all_pairs_triplets.{kind}": round(pairs[kind] - base_pairs[kind], 4) for kind in pairs},
                       **probe_deltas(base_probes, {c: probe(documents, c) for c in probes}, params.shared.seed)}
                rows.append(row)
                print("objectives: " + json.dumps(row), flush=True)
    return rows


CURVE_DIR = Path(__file__).resolve().parent / "learning_curve"  # committed: dvc.yaml's top-level plots read it
SHORT = {"category_retrieval.ndcg@10": "category_ndcg", "classification.macro_f1_supported": "macro_f1",
         "triplet.accuracy_random": "triplet_random", "triplet.accuracy_hard": "triplet_hard", "title_to_abstract.ndcg@10": "title_ndcg"}


def write_curve(rows: list[dict]) -> list[Path]:
    """One CSV per dev file: train_papers, each headline delta and its 95% interval (the first seed's),
    mean over seeds of the delta when several ran. One candidate's rows (run refuses several)."""
    import polars as pl

    if len(candidates := {row["candidate"] for row in rows}) > 1:
        raise ValueError(f"write_curve: rows of {sorted(candidates)}: a curve is one candidate's")

    CURVE_DIR.mkdir(exist_ok=True)
    written = []
    for file in sorted({row["file"] for row in rows}):
        points = []
        for size in sorted({row["train_papers"] for row in rows if row["file"] == file}):
            runs = [row for row in rows if row["file"] == file and row["train_papers"] == size]
            point = {"train_papers": size, "candidate": runs[0]["candidate"], "seeds": len(runs)}
            for key, short in SHORT.items():
                point[short] = round(float(np.mean([r[key][0] for r in runs])), 4)
                point[f"{short}_low"], point[f"{short}_high"] = runs[0][key][1], runs[0][key][2]
            points.append(point)
        path = CURVE_DIR / f"{file}.csv"
        pl.DataFrame(points).write_csv(path)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objectives-files", nargs="+", type=Path, default=None, help="objectives: dev files (default: ../shared/data's two)")
    parser.add_argument("--objectives-pooled", action="store_true",
                        help="objectives: also the two dev files pooled as one (learning-curve points beyond one file's train split)")
    parser.add_argument("--objectives-prepare", action="store_true", help="objectives: only run the DAG to embed_base and encode the eval split")
    parser.add_argument("--objectives-candidates", nargs="+", default=["default"], choices=list(CANDIDATES), help="objectives: candidates")
    parser.add_argument("--objectives-split", choices=["eval", "test"], default="eval", help="objectives: eval (choose) or test (report)")
    parser.add_argument("--objectives-seeds", nargs="+", type=int, default=[42], help="objectives: adapter training seeds")
    parser.add_argument("--objectives-probes", nargs="+", type=float, default=[], metavar="C",
                        help="objectives: also the macro-F1 delta of a logistic regression on every train paper, at each C (e.g. 1 10)")
    parser.add_argument("--objectives-curve", nargs="*", type=int, default=None,
                        help="objectives: learning curve at these train-paper counts and all (no value: 2000 5000 10000 20000)")


QUICK: dict = {}


def run(args: argparse.Namespace):
    from benchmarks.common import Report

    sources = args.objectives_files or DEV_FILES
    if missing := [str(f) for f in sources if not Path(f).exists()]:  # before the pooled file is built from them
        raise SystemExit(f"objectives: {', '.join(missing)} not found. Without ../shared/data, pass --objectives-files with local "
                         "arXiv JSON-lines files (Kaggle schema), e.g. --objectives-files data/sample/arxiv-sample.jsonl.gz")
    files = [*sources, *([dev_vectors.pooled_file([Path(f) for f in sources])] if args.objectives_pooled else [])]
    report = Report("objectives")
    if args.objectives_prepare:
        dev_vectors.encode_files([Path(f) for f in files])
        for source in files:
            report.add(f"{Path(source).name} texts cached", len(dev_vectors.cached_vectors(Path(source))))
        return report
    # Checked before any training: a learning curve would otherwise stop at the pooled file after minutes of the others.
    if args.objectives_curve is not None and len(args.objectives_candidates) > 1:  # its CSV is one candidate's curve
        raise SystemExit(f"objectives: --objectives-curve draws one candidate's curve (dvc.yaml's dev_learning_curve plot); "
                         f"got {', '.join(args.objectives_candidates)}: run it once per candidate")
    if unprepared := [Path(f).name for f in files if not dev_vectors.prepared(Path(f))]:
        raise SystemExit(f"objectives: {', '.join(unprepared)}: not encoded yet: run --objectives-prepare"
                         f"{' --objectives-pooled' if args.objectives_pooled else ''} first")
    curve = args.objectives_curve
    sizes = [None] if curve is None else [*(curve or [2000, 5000, 10000, 20000]), None]
    rows = [row for source in files for row in experiment(Path(source), args.objectives_candidates, args.objectives_split,
                                                           args.objectives_seeds, sizes, args.objectives_probes)]
    results = RESULTS_DIR / f"objectives-{args.objectives_split}{'-curve' if curve is not None else ''}.jsonl"
    with results.open("a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    for row in rows:
        label = f"{row['file']} [{row['candidate']}, seed {row['seed']}, {row['train_papers']} train, {args.objectives_split}]"
        for key in TARGETS:
            d, low, high = row[key]
            report.add(f"{label} {key}", d, note=f"[95% {low:+.4f}, {high:+.4f}]")
    report.notes.append(f"rows appended to {results}")
    if curve is not None:
        report.notes += [f"learning curve: {path.relative_to(RESULTS_DIR.parents[1])}" for path in write_curve(rows)]
    return report
