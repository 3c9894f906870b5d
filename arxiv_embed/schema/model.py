"""params.yaml `model`: the base model (finetune, evaluate, push)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from arxiv_embed.paths import local_reference, user_path
from arxiv_embed.schema.base import PositiveInt, Section, hub_repo_id


def _model_source(name: str) -> str:
    # A folder or an installed package is looked for when a stage loads it; any other name is a Hub id, whose form is
    # checked here (a typo with a space failed only in embed_base, as a traceback).
    if not (local_reference(name) or user_path(name).exists()):  # user_path: the project's folder, from a --temp run too
        hub_repo_id(name)
    return name


class Model(Section):
    base: Annotated[str, AfterValidator(_model_source)]
    trust_remote_code: bool
    max_seq_length: PositiveInt
