"""Stage file I/O: atomic writes (a stage that dies half-way never leaves a half-written output
behind) and checked reads of the tables earlier stages wrote."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path` in one rename.

    Works for files and directories (write the directory's content under the yielded path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: Path | str, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_table(path: Path | str, columns: list[str], produced_by: str) -> pl.DataFrame:
    """The named columns of a parquet file a stage wrote, refusing a missing file or column, null or
    empty texts and an empty table, each with the stage to rerun."""
    import polars as pl

    from arxiv_embed.errors import UserError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing: run `dvc repro {produced_by}` first")
    schema = pl.read_parquet_schema(path)
    if missing := [name for name in columns if name not in schema]:
        raise UserError(f"{path} lacks column(s) {missing} (has {list(schema)}): rerun `dvc repro {produced_by}`")
    table = pl.read_parquet(path, columns=columns)
    if table.is_empty():
        raise UserError(f"{path} has no rows: check the {produced_by} params")
    blank = {name: int((table[name].str.strip_chars() == "").sum()) for name in columns if table.schema[name] == pl.String}
    bad = {name: n for name in columns if (n := table[name].null_count() + blank.get(name, 0))}
    if bad:
        raise UserError(f"{path} has null or empty values {bad}: rerun `dvc repro {produced_by}`")
    return table
