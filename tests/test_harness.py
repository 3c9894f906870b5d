"""The test harness's own guard: a command the tests start never outlives its test. A stuck `dvc` (a wedged queue
worker or lock) must fail that test, not hold the suite, and the stages it started must not load the CPU of every
later test."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from tests.harness import run


class Interrupted(Exception):
    """What pytest-timeout's signal raises in a test's main thread, or a Ctrl-C."""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def raise_interrupted(signum, frame):
    raise Interrupted


# The grandchild sleeps far longer than the test may take: a harness that kills only the command it started waits
# for the grandchild's end (it holds the output pipes) and fails by this timeout.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", ["timeout_s", "interrupted"])
def test_a_command_stopped_is_killed_with_every_process_it_started(tmp_path: Path, stop: str) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # A shell that starts a long child and waits for it, as `dvc repro` waits for a stage.
    command = ["/bin/sh", "-c", f"sleep 600 & echo $! > {pid_file}; wait"]
    previous = signal.signal(signal.SIGUSR1, raise_interrupted)  # SIGALRM is pytest-timeout's own
    try:
        if stop == "timeout_s":
            with pytest.raises(AssertionError, match="still ran after 2 s, killed"):
                run(command, tmp_path, timeout_s=2)
        else:
            threading.Timer(2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            with pytest.raises(Interrupted):
                run(command, tmp_path)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)
