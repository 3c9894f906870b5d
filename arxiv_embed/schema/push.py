"""params.yaml `push` (the push stage, which also reads what the model card describes)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from arxiv_embed.schema.base import Section
from arxiv_embed.schema.download import Download
from arxiv_embed.schema.finetune import Finetune
from arxiv_embed.schema.model import Model
from arxiv_embed.schema.shared import Shared


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


class PushParams(Section):
    shared: Shared
    download: Download
    model: Model
    finetune: Finetune
    push: Push
