"""Whether a process still runs: the stage runner watches its parent with it, and the file
recovery and checkpoint locks tell a live writer from a dead one."""

from __future__ import annotations

import os
from pathlib import Path


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces and parentheses): [0] is the state, [1]
    the parent's pid, [19] the start time in clock ticks after boot. None where /proc cannot tell (macOS, a process gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """True when `pid` is a running process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    stat = proc_stat(pid)
    return stat is None or stat[0] != "Z"  # no /proc (macOS): the kill(0) answer stands


def process_started_at(pid: int) -> float | None:
    """When `pid` started, in seconds since the epoch (to about a second: the boot time /proc gives is whole seconds);
    None where /proc cannot tell (macOS, a process gone meanwhile)."""
    try:
        ticks = int(proc_stat(pid)[19])  # field 22, starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (TypeError, OSError, IndexError, ValueError, StopIteration):  # TypeError: no stat
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
