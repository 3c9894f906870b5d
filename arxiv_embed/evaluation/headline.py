"""The headline: the few numbers that decide whether a run is better, in one small metrics file.

metrics/headline.json is, with the runtime records (metrics/runtime/: wall times, MLflow runs), what dvc.yaml declares
under `metrics`, so `dvc metrics show/diff` and `dvc exp show` print these; the full report stays in metrics/evaluate.json and
metrics/evaluate.md (plain outputs: `dvc metrics show metrics/evaluate.json` reads it).

    {"base":  {"triplet_acc": .., "category_ndcg": .., "macro_f1": .., "title_ndcg": ..},
     "delta": {...the same keys: fine-tuned - base...}}

Fine-tuned = base + delta. The fine-tuned values themselves are left out on purpose: across a sweep
they move exactly as the deltas do (the base is fixed), and both together do not fit
`dvc exp show --only-changed` in 160 columns. The delta is what the quality bar reads: >= 0 on the
first three, >= -0.005 on title_ndcg (issue 21's bar). category_ndcg is push.gate.metric (the gate reads its delta's 95% interval
in metrics/evaluate.json), and push refuses when any of these METRICS has its whole interval below minus
its push.gate.headline_tolerances entry.
"""

from __future__ import annotations

from arxiv_embed.evaluation.retrieval import RETRIEVAL_METRICS
from arxiv_embed.flat import flatten

# headline key -> "lens.metric" key of metrics/evaluate.json
METRICS = {
    "triplet_acc": "triplet.accuracy",  # test triplets, half with hard (same-archive) negatives
    "category_ndcg": "category_retrieval.ndcg@10",  # abstract -> same-category abstracts (push.gate.metric)
    "macro_f1": "classification.macro_f1_supported",  # logistic regression, labels with >= evaluate.min_label_support test papers
    "title_ndcg": "title_to_abstract.ndcg@10",  # title -> its own abstract or a copy of it (search)
}
# Every "lens.metric" key evaluate can give a delta interval (metrics/evaluate.json's delta_ci95), so every key push.gate
# may name: the params check refuses a typo before any training, not push after it. A new lens adds its names here; the
# pipeline test checks the list against a real evaluation's keys.
GATEABLE = frozenset(
    [f"triplet.{name}" for name in ("accuracy", "accuracy_random", "accuracy_hard")]  # the last two: both kinds of negative
    + [f"{lens}.{name}" for lens in ("title_to_abstract", "category_retrieval") for name in RETRIEVAL_METRICS]
    + [f"classification.{name}" for name in ("accuracy", "macro_f1", "macro_f1_supported", "weighted_f1")]
    + [f"clustering.{name}" for name in ("homogeneity", "completeness", "ari", "nmi")]
    + [f"binary.{query}_{how}ndcg@10" for query in ("title", "category") for how in ("", "rescored_")])
DIGITS = 4  # enough to see a 0.001 change; short columns in `dvc exp show`
SCORED_WEIGHTS = "finetuned_weights_sha256"  # metrics/evaluate.json: the weights scored (models.weights_sha256); push checks it


def headline(report: dict) -> dict:
    """The headline of an evaluate report ({base, finetuned, ...}, nested by lens). A metric missing from either model
    is left out (a trimmed-down evaluation must not fail the stage here). finetune's wall time is its own declared
    metric (metrics/runtime/finetune.json's wall_time_s), not a copy here.
    """
    before_all, after_all = flatten(report.get("base", {})), flatten(report.get("finetuned", {}))
    base, delta = {}, {}
    for name, key in METRICS.items():
        before, after = before_all.get(key), after_all.get(key)
        if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
            continue
        base[name] = round(before, DIGITS)
        delta[name] = round(after - before, DIGITS)
    return {"base": base, "delta": delta}
