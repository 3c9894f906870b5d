"""Folders a run leaves in the project's root for the next (paths.kept_between_runs): finetune's checkpoints, the
encoders' resumable chunks. A run holds its folder by an flock on a lock file inside (released when the process
ends, even by kill -9), so another run's prune can tell a folder in use from a stopped run's, which it keeps only
among the few newest: a stopped run resumes from it when run again, and stale ones do not pile up."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from arxiv_embed.files import newest_first

PROBE_RETRY_S = 0.3  # how long a lock is tried before calling its folder held: in_use holds it for an instant


def try_lock(handle, operation: int, retry_s: float = 0.0) -> bool:
    """flock without blocking, tried again for `retry_s`: another run's prune checks every folder's lock for an
    instant, which must not make a free folder look held."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def in_use(folder: Path, lock_name: str) -> bool:
    """True while a run holds `folder` (an flock on its `lock_name` file, shared or exclusive)."""
    try:  # opened for writing: on NFS, flock is emulated by POSIX locks, and an exclusive one needs a writable file
        descriptor = os.open(folder / lock_name, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return not try_lock(descriptor, fcntl.LOCK_EX)
    finally:
        os.close(descriptor)


def still_its_lock(folder: Path, lock_name: str, handle) -> bool:
    """True while `handle` is still `folder`'s lock file: another run's prune may have deleted the folder between its
    opening and its flock, leaving this run holding the lock of a folder that is gone."""
    try:
        current = os.stat(folder / lock_name)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


def open_locked(folder: Path, lock_name: str, take: Callable[[IO[str]], bool]) -> tuple[IO[str], bool]:
    """(`folder`'s lock file, open; what `take` (an flock on it) returned), the folder made if missing. A prune that
    removed the folder between its making and the flock is seen (still_its_lock) and the folder made again."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(folder / lock_name, "a+", encoding="utf-8")  # noqa: SIM115 (the caller's to close)
        except FileNotFoundError:  # pruned since the mkdir
            continue
        taken = take(handle)
        if still_its_lock(folder, lock_name, handle):
            return handle, taken
        handle.close()


@contextmanager
def shared_hold(folder: Path, lock_name: str) -> Iterator[Path]:
    """`folder`, made if missing and held (a shared flock: runs of the same work may share it) until the block ends."""
    # A prune holds the lock exclusively only while moving the folder aside: a blocking wait is short.
    handle, _ = open_locked(folder, lock_name, lambda handle: fcntl.flock(handle, fcntl.LOCK_SH) is None)
    try:
        yield folder
    finally:
        handle.close()


TRASH_PREFIX = ".pruned-"  # a folder being deleted: moved aside first, so its name is free again at once


def remove_unless_held(folder: Path, lock_name: str) -> bool:
    """Delete `folder` unless a run holds it: its lock is taken exclusively first, so a run claiming the folder
    meanwhile finds it held instead of losing it. True when deleted. Tried for PROBE_RETRY_S: another run's prune may
    be checking the lock (in_use) at that instant. The folder is renamed aside under the lock and deleted after: a run
    that opened its lock file meanwhile sees it gone (still_its_lock) and makes the folder anew, however long the
    delete takes."""
    trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}-{os.getpid()}")
    try:
        with open(folder / lock_name, "a+", encoding="utf-8") as handle:
            if not try_lock(handle, fcntl.LOCK_EX, PROBE_RETRY_S) or not still_its_lock(folder, lock_name, handle):
                return False
            os.rename(folder, trash)
    except FileNotFoundError:  # deleted by another run's prune
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def prune_stopped(parent: Path, lock_name: str, others: int, keep: Path | None = None) -> list[Path]:
    """Delete the folders in `parent` (but `keep`) that no run holds, except the `others` most recent of them: running
    runs, whose writes keep their folders newest, never push a stopped run's folder out. Returns what was deleted."""
    if not parent.is_dir():
        return []
    for trash in parent.glob(f"{TRASH_PREFIX}*"):  # left by a prune that was killed while deleting
        shutil.rmtree(trash, ignore_errors=True)
    stopped = [path for path in parent.iterdir()
               if path.is_dir() and path != keep and not path.name.startswith(TRASH_PREFIX) and not in_use(path, lock_name)]
    return [stale for stale in newest_first(stopped)[others:] if remove_unless_held(stale, lock_name)]
