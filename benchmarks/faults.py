"""faults: bounded fault injection on the tiny DAG (the tests' TINY_PARAMS: the embedded sample's first 1,000 records).

One uninterrupted `dvc repro` is the reference (one per finetune.mode the faults need: checkpoints, and so the
checkpoint faults, exist in mode full only). Each fault runs in a copy of it: the stage is run
again (`dvc repro -f -s <stage>`), killed at a named point, then rerun the same way. A row says
whether the rerun recovered (exit 0, `dvc status` clean), whether the outputs equal the
uninterrupted run's (bytes; run-specific fields such as wall time set aside), and what was left
behind (temporary folders, checkpoint folders, RUNNING MLflow runs, live processes).

    python -m benchmarks faults                       # all faults (~10 min on 2 busy cores)
    python -m benchmarks faults --faults clean,push   # some of them
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arxiv_embed.files import process_alive
from tests.harness import deep_update, dvc, make_project, stage_env
from benchmarks.common import Report, load_note
from tests.conftest import TINY_PARAMS

QUICK: dict = {}
DVC = str(Path(sys.executable).parent / "dvc")
# differ run to run: the runtime records' keys (metrics/runtime/<stage>.json) and the benchmark's own
VOLATILE = {"wall_time_s", "samples_per_second", "resumed_from_step", "seconds", "runtime_s", "train_seconds", "vectors_seconds",
            "mlflow_run_id", "reused_texts", "resumed_texts", "encode_seconds", "texts_per_second"}
TEMPORARY = re.compile(r"^\..+\.(tmp|old)-\d+-")


@dataclass
class Fault:
    name: str
    stage: str
    trigger: Callable[[Path], bool]  # True once the point to kill at is reached
    signal: int = signal.SIGKILL
    dvc_only: bool = False  # signal `dvc` alone (as CI cancelling does), not its whole process group
    prepare: Callable[[Path], None] | None = None
    mode: str = "adapter"  # finetune.mode of the project it runs in


def exists(pattern: str) -> Callable[[Path], bool]:
    return lambda project: any(project.glob(pattern))


def registered(project: Path) -> bool:
    with sqlite3.connect(f"file:{project / 'mlflow.db'}?mode=ro", uri=True, timeout=1) as db:
        try:
            return db.execute("select count(*) from model_versions").fetchone()[0] > 0
        except sqlite3.OperationalError:  # locked or mid-write: not yet
            return False


def unregister(project: Path) -> None:
    """A copy of the reference has its release registered already: start push's fault from none."""
    with sqlite3.connect(project / "mlflow.db") as db:
        for table in ("model_version_tags", "model_versions", "registered_model_tags", "registered_model_aliases", "registered_models"):
            db.execute(f"delete from {table}")


def logged(text: str) -> Callable[[Path], bool]:
    """True once the stage's log (start() writes it beside the project) holds `text`."""
    def seen(project: Path) -> bool:
        log = project.parent / f"{project.name}.log"
        return log.exists() and text in log.read_text(errors="replace")
    return seen


STEPS = TINY_PARAMS["finetune"]["full"]["max_steps"]
SAVE = TINY_PARAMS["finetune"]["full"]["save_steps"]
FAULTS = [
    Fault("kill -9 in clean (parts half written)", "clean", exists("data/clean/.parts.tmp-*/part-*")),
    Fault("kill -9 in finetune (adapter) while it trains", "finetune", logged("finetune: adapter steps")),
    Fault("kill -9 in finetune (full) before the first checkpoint", "finetune", exists("models/checkpoints/*/mlflow_run.json"), mode="full"),
    Fault(f"kill -9 in finetune (full) after checkpoint {SAVE}", "finetune", exists(f"models/checkpoints/*/checkpoint-{SAVE}/trainer_state.json"),
          mode="full"),
    Fault(f"SIGTERM to dvc alone after checkpoint {SAVE} (full)", "finetune",
          exists(f"models/checkpoints/*/checkpoint-{SAVE}/trainer_state.json"), signal.SIGTERM, dvc_only=True, mode="full"),
    Fault(f"kill -9 in finetune (full) after the final save (step {STEPS})", "finetune",
          exists(f"models/checkpoints/*/checkpoint-{STEPS}/trainer_state.json"), mode="full"),
    Fault("kill -9 in push after the registry call", "push", registered, prepare=unregister),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--faults", default=None, help="faults: comma-separated stages to inject faults in (default: all)")


def copy_project(reference: Path, dest: Path) -> Path:
    """A copy of the finished reference; MLflow's store names artifact folders by absolute path: repointed."""
    shutil.copytree(reference, dest, symlinks=True)
    old, new = reference.resolve().as_uri(), dest.resolve().as_uri()
    with sqlite3.connect(dest / "mlflow.db") as db:
        for (table,) in db.execute("select name from sqlite_master where type = 'table'").fetchall():
            for column in [row[1] for row in db.execute(f"pragma table_info({table})") if "TEXT" in row[2].upper() or "VARCHAR" in row[2].upper()]:
                db.execute(f"update {table} set {column} = replace({column}, ?, ?) where {column} like ?", (old, new, f"%{old}%"))
    return dest


def start(project: Path, stage: str) -> subprocess.Popen:
    # Output to a file, not a pipe: an orphaned stage would hold a pipe open after `dvc` is gone.
    with open(project.parent / f"{project.name}.log", "a") as log:
        return subprocess.Popen([DVC, "repro", "-f", "-s", stage], cwd=project, env=stage_env(project), start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT, text=True)


def stage_processes(project: Path) -> list[int]:
    """Live processes running in `project` (the stage an orphaned `dvc` left behind)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == project and int(proc.name) != os.getpid() and process_alive(int(proc.name)):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def inject(project: Path, fault: Fault) -> tuple[bool, str]:
    """Run the stage and kill it at the fault's point; returns (whether the signal was sent, what happened, for the note)."""
    process = start(project, fault.stage)
    deadline = time.monotonic() + 600
    while not fault.trigger(project):
        if process.poll() is not None:
            return False, f"stage ended before the fault point (exit {process.returncode})"
        if time.monotonic() > deadline:
            process.kill()
            return False, "fault point not reached within 600 s"
        time.sleep(0.02)
    if fault.dvc_only:
        process.send_signal(fault.signal)
    else:
        os.killpg(process.pid, fault.signal)
    process.wait(timeout=120)
    if not fault.dvc_only:
        return True, "killed"
    # The orphaned stage must notice, stop on its own and end its MLflow run KILLED.
    orphans, started = stage_processes(project), time.monotonic()
    while any(process_alive(pid) for pid in orphans) and time.monotonic() - started < 120:
        time.sleep(0.1)
    if alive := [pid for pid in orphans if process_alive(pid)]:
        return True, f"orphan stage STILL RUNNING after 120 s: {alive}"
    run_id = json.loads(next(project.glob("models/checkpoints/*/mlflow_run.json")).read_text())["run_id"]
    with sqlite3.connect(project / "mlflow.db") as db:
        status = db.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()[0]
    return True, f"{len(orphans)} orphan process(es) stopped by themselves in {time.monotonic() - started:.1f} s, MLflow run {status}"


def comparable(path: Path) -> object:
    """A file's content for the equality check: JSON without its run-specific fields, else bytes."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {k: v for k, v in data.items() if k not in VOLATILE} if isinstance(data, dict) else data
    return path.read_bytes()


def outputs(project: Path, stage: str) -> dict[str, object]:
    """Every output file of `stage` (per dvc.yaml, metrics and plots included)."""
    import yaml

    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]
    names = [next(iter(item)) if isinstance(item, dict) else item for key in ("outs", "metrics", "plots") for item in spec.get(key, [])]
    found: dict[str, object] = {}
    for name in names:
        path = project / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            # Set aside: sentence-transformers' README in models/finetuned (training time in seconds; push writes the
            # release's own card).
            if file.is_file() and file.name != ("README.md" if stage == "finetune" else ""):
                found[file.relative_to(project).as_posix()] = comparable(file)
    return found


def leftovers(project: Path) -> list[str]:
    found = [p.relative_to(project).as_posix() for p in project.rglob(".*") if TEMPORARY.match(p.name) and ".git/" not in p.as_posix()]
    found += [p.relative_to(project).as_posix() for p in project.glob("models/checkpoints/*")]
    with sqlite3.connect(project / "mlflow.db") as db:
        running = db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
    if running:
        found.append(f"{running} RUNNING MLflow run(s)")
    if alive := stage_processes(project):
        found.append(f"live processes {alive}")
    return found


def versions(project: Path) -> int:
    with sqlite3.connect(project / "mlflow.db") as db:
        return db.execute("select count(*) from model_versions").fetchone()[0]


def run(args: argparse.Namespace) -> Report:
    asked = {name.strip() for name in args.faults.split(",") if name.strip()} if args.faults else set()
    if unknown := asked - {f.stage for f in FAULTS}:  # else a typo runs nothing and overwrites the last results
        raise SystemExit(f"faults: --faults names no fault stage {', '.join(sorted(unknown))}: "
                         f"choose from {', '.join(sorted({f.stage for f in FAULTS}))}")
    chosen = [f for f in FAULTS if not asked or f.stage in asked]
    report = Report("faults")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as workdir:
        references: dict[str, Path] = {}
        for mode in dict.fromkeys(f.mode for f in chosen):
            references[mode] = make_project(Path(workdir) / f"reference-{mode}", deep_update(copy.deepcopy(TINY_PARAMS), {"finetune": {"mode": mode}}))
            dvc(references[mode], "repro")
        for number, fault in enumerate(chosen):
            reference = references[fault.mode]
            project = copy_project(reference, Path(workdir) / f"fault-{number}")
            if fault.prepare:
                fault.prepare(project)
            injected, what = inject(project, fault)  # not injected: the stage ran to its end, nothing was tested
            rerun = subprocess.run([DVC, "repro", "-f", "-s", fault.stage], cwd=project, env=stage_env(project),
                                   capture_output=True, text=True)
            status = dvc(project, "status", fault.stage, check=False).stdout
            recovered = rerun.returncode == 0 and "up to date" in status
            ours, theirs = outputs(project, fault.stage), outputs(reference, fault.stage)
            differ = sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))
            left = leftovers(project)
            notes = [what]
            if fault.stage == "push":
                notes.append(f"{versions(project)} registry version(s)")
            if resumed := re.search(r"resumed from step (\d+).*? (\d+) run now\)", rerun.stdout, re.S):
                notes.append(f"rerun resumed from step {resumed[1]} and ran {resumed[2]} step(s)")
            elif fault.stage == "finetune":
                notes.append("rerun started from step 0")
            if rerun.returncode:
                notes.append("rerun: " + (rerun.stderr.strip().splitlines() or ["?"])[-1])
            report.add(fault.name, "NOT INJECTED" if not injected else "recovered" if recovered else "NOT recovered",
                       note=f"equal to uninterrupted: {'yes' if not differ else 'NO ' + ', '.join(differ[:4])}; "
                            f"leftovers: {', '.join(left) if left else 'none'}; {'; '.join(notes)}")
            print(f"faults: {fault.name}: {report.rows[-1].ours}; {report.rows[-1].note}", flush=True)
            shutil.rmtree(project, ignore_errors=True)
    report.notes.append(f"{len(chosen)} faults in {time.monotonic() - started:.0f} s (reference `dvc repro` included)")
    if note := load_note():
        report.notes.append(note)
    return report
