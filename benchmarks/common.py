"""What every benchmark shares: a results table (figure | this project | baseline | ratio), its JSON
file, the machine it ran on, and the wall time and peak RSS of a subprocess."""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
# The team's larger real samples, beside the project when it is checked out next to them; a user's
# clone has none, and the benchmarks then read the sample shipped in the repository.
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "data" / "sample" / "arxiv-sample.jsonl.gz"
SAMPLE_HELP = ("Kaggle-schema JSON-lines file for end_to_end and encoding (default: ../shared/data/arxiv-recent-sample.jsonl.gz "
               "when it exists, else data/sample/arxiv-sample.jsonl.gz, the sample shipped in the repository)")


def benchmark_sample(given: Path | None) -> Path:
    """--sample when given, else the 12k recent cs sample from ../shared/data, else the shipped sample."""
    if given is not None:
        if not given.is_file():
            raise SystemExit(f"--sample {given}: no such file; pass a Kaggle-schema JSON-lines file (.jsonl/.gz/.zip)")
        return given
    recent = SHARED_DATA / "arxiv-recent-sample.jsonl.gz"
    return recent if recent.is_file() else SAMPLE


def with_quick_sizes(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace,
                     quick: dict) -> argparse.Namespace:
    """args with --quick's sizes in place of the options not given on the command line (one given equal to its
    default is kept too: compared with the default, `--steps 8` looked not given)."""
    unset = copy.deepcopy(parser)
    for action in unset._actions:  # parsed again with no defaults: only the options given are set
        action.default = argparse.SUPPRESS
    given = vars(unset.parse_args(argv))
    return argparse.Namespace(**{**vars(args), **{key: value for key, value in quick.items() if key not in given}})


def shared_or(name: str, fallback: Path) -> Path:
    """../shared/data/`name` when it is there, else `fallback` (a file inside the repository)."""
    path = SHARED_DATA / name
    return path if path.is_file() else fallback


@dataclass
class Row:
    """One figure. `higher_is_better` says which way the ratio reads: ratio > 1 always means "we win"."""

    figure: str
    ours: float | str | None
    baseline: float | str | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not isinstance(self.ours, (int, float)) or not isinstance(self.baseline, (int, float)):
            return None
        if not self.ours or not self.baseline:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours


@dataclass
class Report:
    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: str, ours, baseline=None, higher_is_better: bool = True, note: str = "") -> Row:
        row = Row(figure, ours, baseline, higher_is_better, note)
        self.rows.append(row)
        return row

    def to_dict(self) -> dict:
        rows = [{**asdict(row), "ratio": row.ratio} for row in self.rows]
        return {"name": self.name, "machine": machine(), "rows": rows, "notes": self.notes}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"


def format_table(report: Report) -> str:
    """A markdown table, readable in a terminal and pasteable into the README."""
    header = ["figure", "this project", "baseline", "ratio", "note"]
    lines = [header] + [
        [r.figure, _fmt(r.ours), _fmt(r.baseline), "-" if r.ratio is None else f"{r.ratio:.2f}x", r.note] for r in report.rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join([f"## {report.name}", *out, *(f"- {note}" for note in report.notes)])


def save(report: Report, results_dir: Path = RESULTS_DIR) -> Path:
    """Print the table and write it as benchmarks/results/<name>.json."""
    print(format_table(report), flush=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{report.name}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"(written to {path})\n", flush=True)
    return path


def machine() -> dict:
    """Where the numbers come from; the load average says whether other work shared the CPU."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_note() -> str | None:
    """A warning for the table when other processes were using the CPU while we measured."""
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        return f"measured under load: 1-min load average {load:.1f} on {os.cpu_count()} cores (machine shared with other work)"
    return None


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


# Forks and execs the command, then reports the child's peak RSS. A child forked straight from
# this (large) process would count this process's pages in its peak before its exec; forking from
# a bare interpreter bounds that to a few MB.
_WRAPPER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> Measured:
    """Run `cmd` in `cwd`: wall time, and peak RSS of the process (and of the children it waited for)."""
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        peak_file = Path(tmp) / "peak_rss_kb"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", _WRAPPER, str(peak_file), *cmd], cwd=cwd, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak_mb = int(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")
    result = Measured(seconds, peak_mb, proc.returncode, proc.stdout, proc.stderr)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}) in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
