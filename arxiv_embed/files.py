"""Stage file I/O: atomic writes (a stage that dies half-way never leaves a half-written output
behind), checked reads of the tables earlier stages wrote, and a frame-by-frame Parquet writer.

A new output is written beside the old one under a temporary name, then swapped in by renames:

    .<name>.tmp-<pid>-<random>/<name>   the new output, being written
    .<name>.old-<pid>-<random>/<name>   the old output, renamed aside for the instant of the swap

A file is replaced in one rename. A folder cannot be renamed over a non-empty folder, so the old one
is first renamed aside, then the new one renamed in: a kill at any instant leaves a complete old or
a complete new folder. The next `atomic_path` on the same output (that is, the stage's rerun) puts
an old folder back if the kill came between the two renames, and deletes temporaries whose process
is gone. The pattern `.*.tmp-*` / `.*.old-*` is git-ignored.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arxiv_embed.errors import InputError
from arxiv_embed.processes import process_alive, process_started_at

if TYPE_CHECKING:
    import polars as pl

# The longest line a JSON-lines input may have, for download and clean alike (a snapshot record is ~2 KB): a
# longer one is no JSON lines (a JSON array of the whole snapshot, say) and must not be read into memory whole.
MAX_LINE_BYTES = 512 * 2**20
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[^.]+$")
_UMASK = os.umask(0o022)  # read once, at import (os.umask is the only way, and it sets it): the process's own, put back
os.umask(_UMASK)


def with_default_permissions(path: Path) -> None:
    """Give `path`'s files the permissions a plain write would (0666 less the umask; executables keep their x bits):
    some writers create them 0600 (safetensors writes the model's weights through a private temporary file), and a
    released model others cannot read is no release."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    for file in files:
        mode = file.stat().st_mode & 0o777
        if mode & 0o200:  # a read-only file may be a hard link to DVC's cache (cache.type hardlink): left as it is
            os.chmod(file, (0o666 | (mode & 0o111)) & ~_UMASK)


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A new empty folder `.<name>.<kind>-<pid>-<random>` beside `path`, owned by this process."""
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent))


def recover(path: Path | str) -> list[Path]:
    """Repair what a killed writer left beside `path`; returns the temporaries removed.

    A folder renamed aside by a writer that died before renaming its new folder in goes back to
    `path`; every other temporary of a dead process (half-written new outputs, old folders already
    replaced) is deleted. Temporaries of live processes are left alone (a concurrent writer).
    """
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for entry in sorted(path.parent.iterdir()):
        match = _TEMP.match(entry.name)
        if not match or match["name"] != path.name or _writer_alive(int(match["pid"]), entry):
            continue
        if match["kind"] == "old" and not os.path.lexists(path) and os.path.lexists(entry / path.name):
            os.rename(entry / path.name, path)  # killed between the two renames: the old output is back
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _writer_alive(pid: int, temporary: Path) -> bool:
    """Whether the process that made `temporary` may still be writing it. A live process with its pid that started
    after the temporary was last changed did not make it: pids come round again, and in a container each run's stage
    often gets the same small one (even the killed run's own)."""
    if not process_alive(pid):
        return False
    started, changed = process_started_at(pid), modified_time(temporary)
    return started is None or changed is None or started <= changed + PID_START_SLACK_S


PID_START_SLACK_S = 2.0  # process start times from /proc are good to about a second


def sweep(folder: Path | str) -> list[Path]:
    """`recover` every output in `folder` that has temporaries there (for scratch space with no output name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = {match["name"] for entry in folder.iterdir() if (match := _TEMP.match(entry.name))}
    return [removed for name in sorted(names) for removed in recover(folder / name)]


def remove_if_empty(folder: Path) -> dict[Path, int]:
    """A folder that runs share (paths.kept_between_runs) removed once nothing is left in it; else what is left there,
    each entry with its bytes (a folder's counted through): other runs' state, which only those runs delete."""
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        return {}
    if not entries:
        try:
            folder.rmdir()
        except OSError:  # a run wrote into it meanwhile
            pass
        return {}
    left: dict[Path, int] = {}
    for entry in entries:
        try:
            inside = entry.rglob("*") if entry.is_dir() else [entry]
            left[entry] = sum(path.stat().st_size for path in inside if path.is_file())
        except FileNotFoundError:  # its run finished with it meanwhile
            pass
    return left


def modified_time(path: Path) -> float | None:
    """`path`'s modification time; None once another process (a queued run sharing the folder) removed it."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def newest_first(folders: list[Path]) -> list[Path]:
    """`folders` by modification time, newest first; one another process removed meanwhile sorts last."""
    return sorted(folders, key=lambda folder: modified_time(folder) or float("-inf"), reverse=True)


def swap_in(new: Path, path: Path) -> None:
    """Put `new` at `path`: one rename for a file; for a folder, old aside, then new in, then old deleted."""
    if not (path.is_dir() and not path.is_symlink()):
        os.replace(new, path)
        return
    aside = temp_sibling(path, "old")
    os.rename(path, aside / path.name)
    # A kill here leaves the old folder complete under `aside`; recover() moves it back.
    os.rename(new, path)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_path(path: Path | str, kept_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path` (see the module docstring).

    Works for files and directories (write the directory's content under the yielded path). `kept_on`: errors that
    still put what was written in place (a report of what failed, such as clean's rejects), whole, then raise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = temp_sibling(path) / path.name
    try:
        yield tmp
        if tmp.exists():
            with_default_permissions(tmp)
        swap_in(tmp, path)
    except kept_on:
        if tmp.exists():
            swap_in(tmp, path)
        raise
    except Exception as error:
        if (code := storage_fault(error)) is not None:  # name the output: the error itself names no file
            raise OSError(code, os.strerror(code), str(path)) from error
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")  # how polars (Rust) reports an I/O error: "No space left on device (os error 28)"


def storage_fault(error: BaseException) -> int | None:
    """The errno of a full disk, quota or read-only file system that names no file: a write()'s OSError, or polars'
    ComputeError around one (a parquet write). None for anything else (a network error keeps its own message)."""
    if isinstance(error, OSError):
        return error.errno if error.errno in STORAGE_ERRNOS and not error.filename else None
    if type(error).__module__.startswith("polars") and (found := OS_ERROR_CODE.search(str(error))):
        return int(found[1]) if int(found[1]) in STORAGE_ERRNOS else None
    return None


@contextmanager
def scratch_dir(path: Path | str) -> Iterator[Path]:
    """A temporary folder named after `path` (`.<name>.tmp-<pid>-*`), deleted on exit; a killed
    process's leftover is deleted at the next start, like atomic_path's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    folder = temp_sibling(path)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_json(path: Path | str, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json(path: Path | str, produced_by: str | None = None) -> Any:
    """A JSON file; with `produced_by` (the stage that writes it), a missing or malformed one is an InputError naming
    the stage to rerun."""
    path = Path(path)
    if produced_by is None:
        return json.loads(path.read_text(encoding="utf-8"))
    if not path.exists():
        raise InputError(f"{path} is missing: run `dvc repro {produced_by}` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}): rerun `dvc repro {produced_by}`") from None


def require_columns(path: Path | str, columns: list[str] | tuple[str, ...], produced_by: str) -> None:
    """Refuse a missing parquet file, or one without the named columns (InputError naming the stage to
    rerun), reading only its schema: for a file read lazily after."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} is missing: run `dvc repro {produced_by}` first")
    try:
        schema = pl.read_parquet_schema(path)
    except pl.exceptions.ComputeError as exc:  # cut off, or not parquet at all (a git-lfs pointer, say)
        raise InputError(f"{path} is not a readable parquet file ({str(exc).splitlines()[0]}): rerun `dvc repro {produced_by}`") from None
    if missing := [name for name in columns if name not in schema]:
        raise InputError(f"{path} has no column(s) {missing} (it has {list(schema)}): rerun `dvc repro {produced_by}`")


def read_table(path: Path | str, columns: list[str] | tuple[str, ...], produced_by: str,
               nullable: tuple[str, ...] = (), ids: pl.Series | None = None) -> pl.DataFrame:
    """The named columns of a parquet file a stage wrote, refusing a missing file or column, an
    empty table and null or blank values (InputError), each with the stage to rerun; the `nullable`
    columns may hold nulls (dates a record lacks). `ids`: only the rows of these ids are read (a sample's
    texts, not the whole split's: polars filters `is_in` in the scan, where a semi join reads every row first)."""
    import polars as pl

    path, columns = Path(path), list(columns)
    require_columns(path, [*columns, "id"] if ids is not None else columns, produced_by)
    if ids is None:
        table = pl.read_parquet(path, columns=columns)
    else:
        table = pl.scan_parquet(path).filter(pl.col("id").is_in(ids.implode())).select(columns).collect()
    if table.is_empty():
        raise InputError(f"{path} has no rows: check the {produced_by} params")
    checked = [name for name in columns if name not in nullable]
    texts = [name for name in checked if table.schema[name] == pl.String]
    blank = pl.any_horizontal(pl.col(name).is_null() | (pl.col(name).str.strip_chars() == "") if name in texts
                              else pl.col(name).is_null() for name in checked)
    if bad := table.select(blank.sum()).item():
        raise InputError(f"{path}: {bad} of {table.height} rows have a null or empty value: rerun `dvc repro {produced_by}`")
    return table


class ParquetAppender:
    """One Parquet file written frame by frame (polars has no appending writer); zstd, as polars writes."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer = path, None

    def __enter__(self) -> ParquetAppender:
        return self

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self.writer.write_table(table)

    def __exit__(self, *exc_info: object) -> None:
        if self.writer is not None:
            self.writer.close()
