"""params.yaml `model`: the base model (finetune, evaluate, push)."""

from __future__ import annotations

from arxiv_embed.schema.base import PositiveInt, Section


class Model(Section):
    base: str
    trust_remote_code: bool
    max_seq_length: PositiveInt
