"""The schema of params.yaml, validated before any stage does work.

Every section forbids unknown keys, so a typo (`learning_rte`) fails loudly instead of being
ignored, and the error names the key, what was given and what is allowed. The schema has no
defaults: params.yaml is the one source of values (what `dvc params diff` sees), so a key missing
from it is an error that names the key.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from arxiv_embed.errors import UserError

# The keys of arxiv_embed.training.losses.LOSSES and the data kinds its rows read (tests/test_losses.py
# checks they agree), so an unknown loss name fails validation. Named here, not imported, as
# download.source is: every stage validates params, so importing the table would make every stage
# depend on it in dvc.yaml and a loss's change would rerun the whole DAG.
LossName = Literal["mnrl", "cached_mnrl", "triplet", "batch_all", "batch_semi_hard", "batch_hard", "cosent", "angle",
                   "online_contrastive", "supcon"]
DataKind = Literal["same_label", "title_abstract", "triplets", "labels", "graded_pairs", "binary_pairs"]

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Shared(Section):
    seed: NonNegativeInt
    label: Literal["primary_category", "archive"]


HttpUrl = Annotated[str, Field(pattern=r"^https?://")]
# `dvc exp run -S download.oai.from_date=2026-10-01` writes an unquoted YAML date: accept it as text.
IsoDate = Annotated[
    str,
    BeforeValidator(lambda value: value.isoformat() if isinstance(value, date) else value),
    Field(pattern=r"^\d{4}-\d{2}-\d{2}$"),
]


class Oai(Section):
    endpoint: HttpUrl
    sets: Annotated[list[str], Field(min_length=1)]
    from_date: IsoDate | None
    until_date: IsoDate | None
    max_retries: NonNegativeInt
    request_interval_s: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _window(self) -> Oai:
        if self.from_date and self.until_date and self.from_date > self.until_date:
            raise ValueError("download.oai.from_date must be <= download.oai.until_date (YYYY-MM-DD)")
        return self


class Download(Section):
    # The keys of arxiv_embed.data.sources.SOURCES (tests/test_params.py checks they agree). Named
    # here, not imported: every stage validates params, so importing the readers would make every
    # stage depend on them in dvc.yaml and a reader's change would rerun the whole DAG.
    source: Literal["oai", "kaggle", "file"]
    path: str | None
    max_records: PositiveInt | None
    kaggle_url: HttpUrl
    timeout_s: Annotated[float, Field(gt=0.0)]
    oai: Oai

    @model_validator(mode="after")
    def _file_needs_path(self) -> Download:
        if self.source == "file" and not self.path:
            raise ValueError("download.source is 'file' but download.path is empty: set it to a local JSON-lines file")
        return self


class Clean(Section):
    min_abstract_words: NonNegativeInt
    max_abstract_words: PositiveInt
    max_malformed_fraction: Fraction

    @model_validator(mode="after")
    def _range(self) -> Clean:
        if self.min_abstract_words > self.max_abstract_words:
            raise ValueError("clean.min_abstract_words must be <= clean.max_abstract_words")
        return self


class Split(Section):
    method: Literal["stratified", "time"]
    time_field: Literal["first_version", "update_date"]
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    min_papers_per_label: Annotated[int, Field(ge=3)]
    rare_labels: Literal["other", "drop"]

    @model_validator(mode="after")
    def _fractions(self) -> Split:
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ValueError("split.eval_fraction + split.test_fraction must be < 1 (the rest is train)")
        return self


class PerSplit(Section):
    train: NonNegativeInt
    eval: NonNegativeInt
    test: NonNegativeInt


class MakeTriplets(Section):
    triplets_per_split: PerSplit
    hard_negative_fraction: Fraction
    same_label_pairs_per_split: PerSplit
    graded_pairs_per_split: PerSplit


class Model(Section):
    base: str
    trust_remote_code: bool
    max_seq_length: PositiveInt


class Adapter(Section):
    """finetune.mode=adapter: a small identity-initialised adapter on the frozen encoder's cached embeddings."""

    kind: Literal["linear", "mlp"]
    epochs: PositiveInt
    learning_rate: Annotated[float, Field(gt=0)]
    per_label: Annotated[int, Field(ge=2)]  # papers of one label in a label-grouped batch


class HardNegatives(Section):
    """Triplets whose negative is the base model's nearest abstract of another label (training/mining.py)."""

    weight: Annotated[float, Field(ge=0)]  # weight of their TripletLoss trained alongside finetune.loss; 0 = off
    candidates: PositiveInt  # nearest abstracts scanned per anchor for one of another label


class Finetune(Section):
    mode: Literal["adapter", "full"]
    loss: LossName
    train_data: Annotated[list[DataKind], Field(min_length=1)]
    margin: Annotated[float, Field(gt=0)]  # triplet-style losses: cosine distance, in [0, 2]
    temperature: Annotated[float, Field(gt=0)]  # supcon: softmax temperature over cosine similarities
    prototype_weight: Annotated[float, Field(ge=0)]  # supcon: weight of the label-prototype cross-entropy; 0 = off
    retain_title_abstract: Annotated[float, Field(ge=0)]  # weight of title->abstract MNRL trained alongside; 0 = off
    retain_distill: Annotated[float, Field(ge=0)]  # weight of squared error to the base embeddings; 0 = off
    hard_negatives: HardNegatives
    adapter: Adapter
    matryoshka_dims: list[PositiveInt]
    multi_dataset_sampler: Literal["proportional", "round_robin"]
    epochs: Annotated[float, Field(gt=0)]
    max_steps: int
    batch_size: PositiveInt
    mini_batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt
    learning_rate: Annotated[float, Field(gt=0)]
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)]
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    weight_decay: Annotated[float, Field(ge=0)]
    eval_steps: PositiveInt
    save_steps: PositiveInt
    save_total_limit: PositiveInt
    early_stopping_patience: PositiveInt | None
    metric_for_best_model: str
    eval_retrieval: bool
    logging_steps: PositiveInt
    precision: Literal["auto", "fp32", "fp16", "bf16"]
    nproc_per_node: PositiveInt

    @model_validator(mode="after")
    def _steps(self) -> Finetune:
        if self.save_steps % self.eval_steps:
            raise ValueError("finetune.save_steps must be a multiple of finetune.eval_steps (the best checkpoint is chosen at evaluations)")
        return self


class Evaluate(Section):
    batch_size: PositiveInt
    max_train_papers: PositiveInt
    learning_curve_sizes: list[PositiveInt]
    binary_rescore_multiplier: PositiveInt
    min_label_support: PositiveInt
    map_2d: Literal["pca", "tsne"]
    backend: Literal["torch", "int8"]


class Gate(Section):
    metric: str
    tolerance: Annotated[float, Field(ge=0)]
    headline_tolerances: dict[str, Annotated[float, Field(ge=0)]]  # "lens.metric" -> tolerance (push checks the keys)


class Hub(Section):
    enabled: bool
    repo_id: str | None
    private: bool

    @model_validator(mode="after")
    def _repo(self) -> Hub:
        if self.enabled and not self.repo_id:
            raise ValueError("push.hub.enabled is true but push.hub.repo_id is empty: set it to 'user/model-name'")
        return self


class Push(Section):
    license: str
    registry_model_name: str
    gate: Gate
    hub: Hub


class Params(Section):
    shared: Shared
    download: Download
    clean: Clean
    split: Split
    make_triplets: MakeTriplets
    model: Model
    finetune: Finetune
    evaluate: Evaluate
    push: Push

    @model_validator(mode="after")
    def _mined_pairs(self) -> Params:
        if self.finetune.hard_negatives.weight and not self.make_triplets.same_label_pairs_per_split.train:
            raise ValueError("finetune.hard_negatives.weight > 0 mines negatives for make_triplets' same_label train pairs: "
                             "set make_triplets.same_label_pairs_per_split.train > 0, or finetune.hard_negatives.weight to 0")
        return self


class ParamsError(UserError):
    """params.yaml is missing, unreadable or does not match the schema."""


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against params.yaml's documented keys)"
    if error["type"] == "missing":
        return f"{key}: missing (params.yaml is the one source of values: add the key, as documented in the committed params.yaml)"
    given = error.get("input")
    given = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{key}: {error['msg']}{given}"


def parse_params(raw: object, source: str = str(PARAMS_FILE)) -> Params:
    """Validate an already-loaded params mapping; raise ParamsError naming each bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        # Strict: "32" is not an int. Strict mode still takes `epochs: 1` for a float field.
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ParamsError(f"{source} is invalid:\n  {lines}") from None


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML reads `2e-5` as a string (YAML 1.1); DVC and YAML 1.2 read it as a float. Read it as
    DVC does, so `learning_rate: 2e-5` in params.yaml means the same to the stages as to `dvc exp run -S`."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (every stage calls this first)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12FloatLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run the stage from the project root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))


if __name__ == "__main__":
    # `python -m arxiv_embed.params` validates params.yaml on its own (used by `make check`).
    load_params()
    print(f"{PARAMS_FILE}: ok")
