"""params.yaml `push` (the push stage, which also reads what the model card describes)."""

from __future__ import annotations

import difflib
import re
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from arxiv_embed.evaluation.headline import GATEABLE, METRICS as HEADLINE
from arxiv_embed.schema.base import Section
from arxiv_embed.schema.download import Download
from arxiv_embed.schema.finetune import Finetune
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.shared import Shared


def _registry_name(name: str) -> str:
    # MLflow refuses '/', ':' and names that are no plain path segment ('.', '..x') only after the release is written;
    # a single quote would break push's registry filters.
    if not name.strip() or set(name) & set("/:'") or name == "." or name.startswith(".."):
        raise ValueError(f"{name!r} is not a registry model name: use a non-empty name without '/', ':', a single quote "
                         "a leading '..', or '.' alone")
    return name


def _hub_repo_id(repo_id: str | None) -> str | None:
    # The Hub's rule (huggingface_hub.utils.validate_repo_id), checked before any work instead of after registering.
    if repo_id is not None and (not re.fullmatch(r"(?:[\w.-]{1,96}/)?[\w.-]{1,96}", repo_id) or "--" in repo_id or ".." in repo_id
                                or any(part[0] in "-." or part[-1] in "-." for part in repo_id.split("/"))):
        raise ValueError(f"{repo_id!r} is not a Hub repo id: 'user/model-name' (letters, digits, '-', '_', '.')")
    return repo_id


def _gateable(key: str) -> str:
    if key not in GATEABLE:
        close = difflib.get_close_matches(key, sorted(GATEABLE), n=1)
        by_lens: dict[str, list[str]] = {}
        for name in sorted(GATEABLE):
            by_lens.setdefault(name.split(".")[0], []).append(name.split(".", 1)[1])
        listed = "; ".join(f"{lens}.{{{', '.join(names)}}}" for lens, names in by_lens.items())
        raise ValueError(f"{key!r} is not a metric evaluate gives an interval{f' (did you mean {close[0]}?)' if close else ''}; "
                         f"the metrics are {listed}")
    return key


class Gate(Section):
    metric: Annotated[str, AfterValidator(_gateable)]
    tolerance: Annotated[float, Field(ge=0)]
    # "lens.metric" -> tolerance: one per headline metric, and any other metric to gate too.
    headline_tolerances: dict[Annotated[str, AfterValidator(_gateable)], Annotated[float, Field(ge=0)]]

    @model_validator(mode="after")
    def _every_headline_metric(self) -> Gate:
        # A headline key left out leaves that metric ungated: found here, before any training, not at push.
        if missing := [key for key in HEADLINE.values() if key not in self.headline_tolerances]:
            raise ValueError(f"push.gate.headline_tolerances has no tolerance for {', '.join(missing)}: add one per headline "
                             f"metric ({', '.join(HEADLINE.values())}; 0.0 = any loss outside the noise refuses)")
        return self


class Hub(Section):
    enabled: bool
    repo_id: Annotated[str | None, AfterValidator(_hub_repo_id)]
    private: bool

    @model_validator(mode="after")
    def _repo(self) -> Hub:
        if self.enabled and not self.repo_id:
            raise ValueError("push.hub.enabled is true but push.hub.repo_id is empty: set it to 'user/model-name'")
        return self


class Push(Section):
    license: str
    registry_model_name: Annotated[str, AfterValidator(_registry_name)]
    gate: Gate
    hub: Hub


class PushParams(Section):
    shared: Shared
    download: Download
    model: Model
    finetune: Finetune
    push: Push
