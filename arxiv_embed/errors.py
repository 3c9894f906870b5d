"""One user-facing error type, and the runner every stage's `__main__` goes through.

A `UserError` is a problem the user can fix (bad params, a missing or malformed input, an
unreachable server): its message names the file, line or param and what to do, and the runner
prints it alone, without a traceback. Anything else is a bug and keeps its traceback, except the
faults of the machine rather than the code: SIGTERM/Ctrl-C, a permission refused, a file where a
folder should be (or the reverse), each printed as one message naming the path and the fix.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from arxiv_embed.processes import proc_stat, process_alive


def redact_url(url: str) -> str:
    """A URL as messages, logs, params errors and model cards show it: no user:password@ and no query (a signed link's
    token) or fragment. The userinfo is cut to the last `@` after the scheme, so a password holding an unencoded `/`, `?`
    or `#` (which a URL parser reads as path, query or fragment) goes too; a rare `@` in a path loses what is before it."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    rest = rest.rpartition("@")[2].split("#", 1)[0]
    return f"{scheme}://{rest.split('?', 1)[0]}?..." if "?" in rest else f"{scheme}://{rest}"


class UserError(Exception):
    """A problem the user can fix; the message names the file or param and the fix."""

    exit_code = 1


class InputError(UserError):
    """An input file is missing, unreadable or malformed; the message names it and the stage to rerun."""


class TrainingSetupError(UserError):
    """The finetune params, the data or the model do not fit together."""


class Interrupted(UserError):
    """SIGTERM or Ctrl-C: the stage stopped cleanly (its outputs are untouched)."""

    exit_code = 130


def raise_on_sigterm() -> None:
    """SIGTERM (kill, DVC/CI cancelling, torchrun stopping workers) -> KeyboardInterrupt, so the
    cleanup paths run (temporaries deleted, MLflow run ended KILLED) as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        # A second SIGTERM while the cleanup runs ends the process at once, without a traceback.
        signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "fish"}


def _parent_of(pid: int) -> int | None:
    stat = proc_stat(pid)
    return int(stat[1]) if stat and len(stat) > 1 and stat[1].isdigit() else None


def supervisors() -> list[int]:
    """The parent, and through any shells between (DVC runs `$SHELL -c cmd`), the first ancestor
    that is not a shell: the processes whose death means nobody waits for this stage any more."""
    pids, pid = [], os.getppid()
    while pid and pid > 1:
        pids.append(pid)
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            break  # no /proc (macOS): the parent alone
        if name not in SHELLS:
            break
        pid = _parent_of(pid)
    return pids


def stop_with_parent(interval_s: float = 1.0) -> None:
    """Under `dvc repro` (which sets DVC_STAGE), SIGTERM this process when its parent or supervising
    `dvc` dies (killed -9, or SIGTERMed alone as CI cancelling and schedulers do): an orphaned stage would otherwise keep training and
    race a rerun. The SIGTERM takes the stage's usual interrupt path (MLflow run KILLED)."""
    if not os.environ.get("DVC_STAGE"):
        return  # not run by `dvc repro`: a stage started by hand (say under nohup) may outlive its shell
    parent, watched = os.getppid(), supervisors()
    if parent <= 1:
        return  # started by init or a container's PID 1: no parent to outlive

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent or not all(process_alive(pid) for pid in watched):
                print(f"{Path(sys.argv[0]).stem}: the parent process {watched} is gone: stopping", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def describe_os_error(error: OSError) -> str | None:
    """One line naming the path and the fix for a fault of the file system, or None (a bug: keep the traceback)."""
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name) or "a file"
    if isinstance(error, PermissionError):
        return (f"permission denied on {where}: the stage must be able to read its inputs and write its outputs; "
                "fix the owner or mode (chown/chmod) or run as the user who owns the project")
    if isinstance(error, NotADirectoryError) or error.errno == errno.ENOTDIR:
        return (f"{where}: a part of this path is a file where a folder is expected; "
                "move that file aside (or delete it) and rerun")
    if isinstance(error, IsADirectoryError):
        return f"{where} is a folder where a file is expected; move that folder aside (or delete it) and rerun"
    if isinstance(error, FileExistsError):
        if error.filename and Path(error.filename).is_file():
            return f"{where} is a file where a folder is expected; move that file aside (or delete it) and rerun"
        return f"{where} already exists and is in the way; move it aside (or delete it) and rerun"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left writing {where}: free disk space (or the quota) and rerun"
    if error.errno == errno.EROFS:
        return f"{where} is on a read-only file system: run the pipeline from a writable copy"
    return None


START_OVER = "a rerun starts this stage over"


def run(main: Callable[[], object], name: str | None = None, rerun: str = "rerun to continue", takes_arguments: bool = False) -> None:
    """Run a stage's main(): a UserError is printed as `<stage>: error: <message>` and exits non-zero.
    rerun: what a rerun after Ctrl-C does (START_OVER where the stage keeps nothing of a stopped run).
    takes_arguments: main parses sys.argv itself; otherwise the stage takes none (params.yaml holds every knob), and
    `--help` or a stray argument is answered before any work, not ignored by a stage that then rewrites its outputs."""
    name = name or Path(sys.argv[0]).stem
    if not takes_arguments:
        doc = (sys.modules[main.__module__].__doc__ or "").strip()
        argparse.ArgumentParser(prog=f"python -m {main.__module__ if main.__module__ != '__main__' else 'stages.' + name}",
                                description=doc.splitlines()[0] if doc else None,
                                epilog="Every knob is in params.yaml; run the stage through `dvc repro`.").parse_args()
    raise_on_sigterm()
    stop_with_parent()
    try:
        main()
    except UserError as error:
        print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt as interrupt:
        print(f"{name}: interrupted ({str(interrupt) or 'Ctrl-C'}); no output is half-written (each is replaced whole or left "
              f"as it was), {rerun}", file=sys.stderr, flush=True)
        sys.exit(Interrupted.exit_code)
    except OSError as error:
        if (message := describe_os_error(error)) is None:
            raise
        print(f"{name}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(UserError.exit_code)
