"""Nested mappings <-> dotted keys: the one shape metric and param names take in MLflow, the
report, the model card and the push gate (`category_retrieval.ndcg@10`, `finetune.loss`)."""

from __future__ import annotations

from collections.abc import Mapping


def flatten(nested: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}, in order."""
    flat: dict[str, object] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat |= flatten(value, name) if isinstance(value, Mapping) else {name: value}
    return flat
