"""The test harness's own guards: a command the tests start never holds the suite. A stuck `dvc` fails its test (and
the stages it started go with it, not loading the CPU of every later test), and a daemon a command leaves behind
(`dvc queue start`'s workers) does not make the test wait for the daemon's end."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from tests.harness import run

from arxiv_embed.processes import process_alive


class Interrupted(Exception):
    """What pytest-timeout's signal raises in a test's main thread, or a Ctrl-C."""


def raise_interrupted(signum, frame):
    raise Interrupted


def gone_soon(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not process_alive(pid)


# The grandchildren sleep far longer than a test may take: a harness that waits for them fails by this timeout.
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
    assert gone_soon(int(pid_file.read_text()))


@pytest.mark.timeout(60)
def test_a_command_returns_when_it_exits_though_a_daemon_it_started_holds_its_output(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    # As `dvc queue start` leaves its workers: a session of their own, the command's stdout and stderr still open.
    started = run(["/bin/sh", "-c", f"setsid sleep 600 & echo $! > {pid_file}; echo started"], tmp_path)
    daemon = int(pid_file.read_text())
    try:
        assert started.stdout == "started\n" and process_alive(daemon)
    finally:
        os.kill(daemon, signal.SIGKILL)
