"""Faults, and the guarantees that hold through them: atomic folder swaps under a kill at any
instant, stale temporaries cleaned, one finetune per checkpoint folder, a stage that stops with its
parent, one message (no traceback) per fault, a run key that follows the data's contents, stale
MLflow runs closed, and a DVC cache that edited outputs cannot reach."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from arxiv_embed import files, processes, run_folders, tracking
from tests.harness import params_with
from arxiv_embed.training import checkpoints
from tests.conftest import ROOT, dvc, make_project

PYTHON_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def python(code: str, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=PYTHON_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------ atomic folders


# Replaces `out` with a new folder through atomic_path; the fs call number KILL_AT (rename, replace
# or rmtree) kills the process with SIGKILL just before it runs.
SWAP = """
import os, shutil, signal, sys
from pathlib import Path
from arxiv_embed import files, processes, run_folders

kill_at, calls = int(sys.argv[1]), [0]
def killing(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
for module, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree")):
    setattr(module, name, killing(getattr(module, name)))
with files.atomic_path(Path(sys.argv[2])) as tmp:
    tmp.mkdir()
    for i in range(3):
        (tmp / f"part-{i}").write_text(f"new {i}")
"""


def test_a_kill_at_any_instant_of_a_folder_swap_leaves_a_complete_folder(tmp_path: Path) -> None:
    """Kill before each rename/rmtree of the swap in turn (one of them: between the two renames):
    the next start must find a complete old or new folder at the path, and no temporaries."""
    old = {f"part-{i}": f"old {i}" for i in range(3)}
    new = {f"part-{i}": f"new {i}" for i in range(3)}
    outcomes = []
    for kill_at in range(1, 10):
        out = tmp_path / f"kill-{kill_at}" / "out"
        out.mkdir(parents=True)
        for name, text in old.items():
            (out / name).write_text(text)
        child = subprocess.run([sys.executable, "-c", SWAP, str(kill_at), str(out)], env=PYTHON_ENV, capture_output=True, text=True)
        killed = child.returncode == -signal.SIGKILL
        assert killed or child.returncode == 0, child.stderr
        if not killed:
            assert tree(out) == new and sorted(p.name for p in out.parent.iterdir()) == ["out"]
            break
        # What a reader sees right after the kill: the old folder, the new one, or the old one renamed aside.
        aside = [p / "out" for p in out.parent.glob(".out.old-*") if (p / "out").is_dir()]
        visible = [tree(folder) for folder in [out, *aside] if folder.is_dir()]
        assert old in visible or new in visible, (kill_at, visible)
        files.recover(out)  # what the next atomic_path on `out` starts with
        assert tree(out) in (old, new), kill_at
        assert sorted(p.name for p in out.parent.iterdir()) == ["out"], kill_at
        outcomes.append("aside" if aside else ("new" if tree(out) == new else "old"))
    else:
        pytest.fail("the swap never completed")
    assert "aside" in outcomes, outcomes  # one kill came between the two renames


def test_temporaries_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path: Path) -> None:
    out = tmp_path / "index"
    out.mkdir()
    (out / "keep").write_text("current")
    dead = [tmp_path / f".index.tmp-{dead_pid()}-abc", tmp_path / f".index.old-{dead_pid()}-def"]
    live = tmp_path / f".index.tmp-{os.getpid()}-ghi"
    other = tmp_path / f".other.tmp-{dead_pid()}-jkl"
    for folder in (*dead, live, other):
        (folder / "index").mkdir(parents=True)
    # This process's own pid on a temporary last changed before it started: a killed run's, whose pid came round
    # again (in a container a stage often gets the same small pid each run).
    reused_pid = tmp_path / f".index.tmp-{os.getpid()}-mno"
    (reused_pid / "index").mkdir(parents=True)
    long_ago = processes.process_started_at(os.getpid()) - 3600
    os.utime(reused_pid, (long_ago, long_ago))
    dead.append(reused_pid)
    assert sorted(files.recover(out)) == sorted(dead)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index", live.name, other.name])
    assert tree(out) == {"keep": "current"}  # an old folder is put back only when the output is missing
    assert files.sweep(tmp_path) == [other]


def test_outputs_get_the_permissions_a_plain_write_gives(tmp_path: Path) -> None:
    """safetensors writes a model's weights 0600: a release others cannot read. Outputs swapped in get 0666 less the
    umask, executables keep their x bits; the weights as finetune saves them are checked too."""
    from safetensors.numpy import save_file

    from arxiv_embed.files import _UMASK, atomic_path

    with atomic_path(tmp_path / "model") as folder:
        (folder / "nested").mkdir(parents=True)
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "nested" / "model.safetensors"))
        assert (folder / "nested" / "model.safetensors").stat().st_mode & 0o777 == 0o600
        (folder / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(folder / "run.sh", 0o700)
    assert (tmp_path / "model" / "nested" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~_UMASK
    assert (tmp_path / "model" / "run.sh").stat().st_mode & 0o777 == (0o666 | 0o100) & ~_UMASK  # its own x bit kept


@pytest.mark.parametrize("temporary", ["models/.finetuned.tmp-123-x1y2/finetuned/model.safetensors",
                                       "models/.release.old-99-abc/release/README.md", "data/clean/.parts.tmp-7-q/part-000001.parquet",
                                       "metrics/.plots.tmp-5-zz/plots/a.png"])
def test_temporaries_are_git_ignored(temporary: str) -> None:
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", temporary], cwd=ROOT).returncode == 0


# ------------------------------------------------------------------ one finetune per run folder


def holding(run_dir: Path) -> subprocess.Popen:
    """Another finetune's process, holding `run_dir` (checkpoints.locked) for a minute once this returns."""
    holder = python(f"""
        import time
        from pathlib import Path
        from arxiv_embed.training import checkpoints
        with checkpoints.locked(Path({str(run_dir)!r})):
            print("locked", flush=True)
            time.sleep(60)
    """)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_queued_point_whose_run_folder_is_held_trains_in_its_own_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture) -> None:
    """Two queued points with the same finetune params and data (a sweep over a key the run key ignores): the second
    keeps its checkpoints in its workspace rather than failing; a second run in the project itself still fails."""
    from arxiv_embed.training import checkpoints

    project = tmp_path / "project"
    shared = project / "models" / "checkpoints" / "abc123"
    holder = holding(shared)
    try:
        workspace = project / ".dvc" / "tmp" / "exps" / "tmp-point"
        workspace.mkdir(parents=True)
        monkeypatch.chdir(workspace)
        monkeypatch.setenv("DVC_ROOT", str(project))
        with checkpoints.claimed("abc123") as run_dir:
            assert run_dir == (workspace / "models" / "checkpoints" / "abc123").resolve() and run_folders.in_use(run_dir, checkpoints.LOCK)
        assert f"PID {holder.pid}" in capsys.readouterr().out
        monkeypatch.chdir(project)
        with pytest.raises(checkpoints.RunFolderBusy, match=f"PID {holder.pid}"), checkpoints.claimed("abc123"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with checkpoints.claimed("abc123") as run_dir:  # free again: the project's folder
        assert run_dir == shared.resolve()


def test_a_folder_another_finetune_s_prune_checks_for_an_instant_is_not_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prune_checkpoint_runs takes each folder's lock for an instant (in_use): a finetune claiming it then must not
    read that as another run's, fail, or (queued) fall back to a folder of its own and train from step 0."""
    import fcntl
    import threading

    from arxiv_embed.training import checkpoints

    run_dir = tmp_path / "checkpoints" / "abc123"
    run_dir.mkdir(parents=True)
    checking = open(run_dir / checkpoints.LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (closed by the timer)
    fcntl.flock(checking, fcntl.LOCK_EX)  # as run_folders.in_use checks it
    threading.Timer(0.1, checking.close).start()
    monkeypatch.setattr(checkpoints, "PROBE_RETRY_S", 3.0)  # room for a late timer on a loaded machine; 0 would fail
    with checkpoints.locked(run_dir):
        assert run_folders.in_use(run_dir, checkpoints.LOCK)


def test_a_folder_another_finetune_s_prune_deletes_while_it_is_claimed_is_made_anew_and_held(tmp_path: Path,
                                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped run's folder, pruned by another finetune between this one's opening of the lock file and its flock:
    this run must hold a live folder's lock (so prunes see it in use), not the deleted one's; a killed prune's
    half-deleted leftover is removed by the next prune and takes no kept place."""
    from arxiv_embed.training import checkpoints

    run_dir = tmp_path / "checkpoints" / "abc123"
    run_dir.mkdir(parents=True)
    (run_dir / checkpoints.LOCK).write_text("4242\n")  # a stopped run's
    (run_dir / "checkpoint-8").mkdir()
    real_try_lock, pruned = checkpoints.try_lock, []

    def pruned_first(handle, operation: int, retry_s: float = 0.0) -> bool:
        if not pruned:
            pruned.append(run_folders.remove_unless_held(run_dir, checkpoints.LOCK))
        return real_try_lock(handle, operation, retry_s)

    monkeypatch.setattr(checkpoints, "try_lock", pruned_first)
    with checkpoints.locked(run_dir):
        assert pruned == [True] and not (run_dir / "checkpoint-8").exists()
        assert run_folders.in_use(run_dir, checkpoints.LOCK)
        assert (run_dir / checkpoints.LOCK).read_text().strip() == str(os.getpid())
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["abc123"]  # the moved-aside folder is deleted too

    leftover = run_dir.parent / f"{run_folders.TRASH_PREFIX}old-99"
    (leftover / "checkpoint-4").mkdir(parents=True)
    (run_dir.parent / "newer").mkdir()
    checkpoints.prune_checkpoint_runs(run_dir.parent / "newer", others=1)
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["abc123", "newer"]


def test_a_second_holder_of_a_run_folder_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "checkpoints" / "abc123"
    holder = holding(run_dir)
    try:
        start = time.monotonic()
        with pytest.raises(checkpoints.RunFolderBusy, match=f"PID {holder.pid}") as busy, checkpoints.locked(run_dir):
            pass
        # Tried for PROBE_RETRY_S (0.3 s), never waiting on the holder (alive until `finally`): a loose bound, so a
        # loaded runner passes; a blocking lock would wait for the holder until pytest-timeout fails it.
        assert time.monotonic() - start < 10 and f"kill {holder.pid}" in str(busy.value)
        assert run_folders.in_use(run_dir, checkpoints.LOCK)
        (tmp_path / "checkpoints" / "older").mkdir()
        checkpoints.prune_checkpoint_runs(tmp_path / "checkpoints" / "older", others=0)
        assert run_dir.is_dir()  # in use: never pruned
        # Queued points share the folder: a running one (newest, saving) takes no place from a stopped one's.
        for age, name in enumerate(["stopped", "stopped-earlier"], start=1):
            (tmp_path / "checkpoints" / name).mkdir()
            os.utime(tmp_path / "checkpoints" / name, (time.time() - age * 100, time.time() - age * 100))
        checkpoints.prune_checkpoint_runs(tmp_path / "checkpoints" / "older", others=1)
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(["older", run_dir.name, "stopped"])
    finally:
        holder.kill()
        holder.wait()
    assert not run_folders.in_use(run_dir, checkpoints.LOCK)  # a kill -9 releases it
    with checkpoints.locked(run_dir):
        assert (run_dir / checkpoints.LOCK).read_text().strip() == str(os.getpid())


# ------------------------------------------------------------------ messages and signals


STAGE = """
import os, sys, time
from pathlib import Path
from arxiv_embed.errors import run
def main():
    fault = sys.argv[1]
    if fault == "permission":
        Path("ro").mkdir(); os.chmod("ro", 0o500)
        os.setuid(65534) if os.getuid() == 0 else None  # root writes anywhere: drop to nobody
        Path("ro/out.json").write_text("{}")
    elif fault == "not_a_folder":
        Path("metrics").write_text("a file where a folder belongs")
        (Path("metrics") / "evaluate.json").write_text("{}")
    elif fault == "file_in_the_way":
        from arxiv_embed.files import write_json
        Path("metrics").write_text("a file where a folder belongs")
        write_json("metrics/evaluate.json", {})
    elif fault == "disk_full_parquet":  # /dev/full: every write fails with ENOSPC, as on a full disk
        import polars as pl
        from arxiv_embed.files import atomic_path
        with atomic_path("data/out.parquet"):
            pl.DataFrame({"a": list(range(100_000))}).write_parquet("/dev/full")
    elif fault == "disk_full_write":
        from arxiv_embed.files import atomic_path
        with atomic_path("data/raw/arxiv.jsonl.gz"), open("/dev/full", "wb") as sink:
            sink.write(b"x" * 100_000)
    elif fault == "sleep":
        print("started", flush=True)
        time.sleep(60)
run(main, "stage", takes_arguments=True)  # main reads the fault from sys.argv
"""


@pytest.mark.parametrize(("fault", "message"), [
    ("permission", "stage: error: permission denied on ro/out.json"),
    ("not_a_folder", "stage: error: metrics/evaluate.json: a part of this path is a file where a folder is expected"),
    ("file_in_the_way", "stage: error: metrics is a file where a folder is expected; move that file aside"),
    # A full disk names the output being written: polars' error and a plain write()'s name no file of their own.
    ("disk_full_parquet", "stage: error: no space left writing data/out.parquet: free disk space"),
    ("disk_full_write", "stage: error: no space left writing data/raw/arxiv.jsonl.gz: free disk space"),
])
def test_a_file_system_fault_is_one_message_naming_the_path(tmp_path: Path, fault: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-c", STAGE, fault], cwd=tmp_path, env=PYTHON_ENV, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(message), result.stderr


def test_sigterm_is_one_message_and_exit_130(tmp_path: Path) -> None:
    stage = subprocess.Popen([sys.executable, "-c", STAGE, "sleep"], cwd=tmp_path, env=PYTHON_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert stage.stdout.readline().strip() == "started"
    stage.send_signal(signal.SIGTERM)
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip() == "stage: interrupted (signal SIGTERM); no output is half-written (each is replaced whole or left as it was), rerun to continue"


def test_a_stage_stops_when_its_parent_dies_even_through_a_shell(tmp_path: Path) -> None:
    """As `dvc` runs it: dvc -> $SHELL -c cmd -> stage. Killing the `dvc` stand-in alone must stop the stage."""
    (tmp_path / "stage.py").write_text(STAGE)
    parent = python(f"""
        import os, subprocess, sys, time
        stage = subprocess.Popen(["/bin/sh", "-c", "{sys.executable} stage.py sleep; echo shell-done"], cwd={str(tmp_path)!r},
                                 env={{**os.environ, "DVC_STAGE": "tiny"}})  # as dvc sets it
        print(stage.pid, flush=True)
        time.sleep(120)
    """)
    shell_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (stage := [p for p in Path("/proc").glob("[0-9]*") if _parent_pid(p) == shell_pid]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stage_pid = int(stage[0].name)
    time.sleep(2)  # the stage is up and watching
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while files.process_alive(stage_pid):
        assert time.monotonic() < deadline, "the stage outlived its parent"
        time.sleep(0.2)


def _parent_pid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------ run key and stale MLflow runs


def test_run_key_follows_file_contents_seed_and_world_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "train.parquet"
    pl.DataFrame({"anchor": ["a", "b"], "positive": ["c", "d"]}).write_parquet(data)
    params = params_with()
    base = checkpoints.run_key(params, [data])
    assert checkpoints.run_key(params, [data]) == base
    pl.DataFrame({"anchor": ["a", "B"], "positive": ["c", "d"]}).write_parquet(data)  # same path, new contents
    changed = checkpoints.run_key(params, [data])
    assert changed != base
    assert checkpoints.run_key(params_with({"shared": {"seed": params.shared.seed + 1}}), [data]) != changed
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert checkpoints.run_key(params, [data]) != changed
    monkeypatch.delenv("WORLD_SIZE")
    # A base model folder retrained in place keeps its name (model.base): its files decide, so no stale checkpoint resumes.
    folder = tmp_path / "my-base"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    (folder / "model.safetensors").write_bytes(b"weights 1")
    local = params_with({"model": {"base": str(folder)}})
    before = checkpoints.run_key(local, [data])
    (folder / "model.safetensors").write_bytes(b"weights 2")
    assert checkpoints.run_key(local, [data]) != before
    # The code that trains: DVC reruns finetune on a code change, which must not resume the old code's checkpoints.
    package = tmp_path / "project" / "arxiv_embed"
    (package / "training").mkdir(parents=True)
    (tmp_path / "project" / "stages").mkdir()
    for source in ("training/losses.py", "training/checkpoints.py"):
        (package / source).write_text(f"# {source}\n")
    (tmp_path / "project" / "stages" / "finetune.py").write_text("# the stage\n")
    monkeypatch.setattr(checkpoints, "__file__", str(package / "training" / "checkpoints.py"))
    code, keyed = checkpoints.code_sha256(), checkpoints.run_key(params, [data])
    (package / "training" / "losses.py").write_text("# losses.py, edited\n")
    assert checkpoints.code_sha256() != code and checkpoints.run_key(params, [data]) != keyed
    code, keyed = checkpoints.code_sha256(), checkpoints.run_key(params, [data])
    (tmp_path / "project" / "stages" / "finetune.py").write_text("# the stage, edited\n")
    assert checkpoints.code_sha256() != code and checkpoints.run_key(params, [data]) != keyed
    code = checkpoints.code_sha256()
    os.symlink("user@host.1234:1", package / "training" / ".#losses.py")  # an editor's lock on a file being edited
    assert checkpoints.code_sha256() == code
    keyed = checkpoints.run_key(params, [data])
    monkeypatch.setattr(checkpoints, "_version", lambda name: "another" if name == "transformers" else None)
    assert checkpoints.run_key(params, [data]) != keyed


@pytest.fixture
def tracking_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(client, experiment id, this host) of a fresh project store."""
    import socket

    import mlflow

    from arxiv_embed.tracking import configure_tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    configure_tracking()
    return mlflow.MlflowClient(), mlflow.get_experiment_by_name("arxiv-embed").experiment_id, socket.gethostname()


def test_full_runs_are_closed_only_when_their_process_is_gone(tracking_store) -> None:
    """A queued point with the same params trains in its own workspace's folder when another holds the shared one
    (checkpoints.claimed): its RUNNING run has the same run key, and must stay RUNNING while its process lives."""
    import os

    client, experiment, host = tracking_store
    gone = str(dead_pid())
    runs = {name: client.create_run(experiment, tags={"stage": "finetune", "mode": "full", "run_key": "k1", "host": where, "pid": pid}).info.run_id
            for name, where, pid in [("killed", host, gone), ("same_key_alive", host, str(os.getpid())), ("current", host, gone),
                                     ("no_pid", host, ""), ("other_host", "elsewhere", gone)]}
    assert sorted(tracking.close_dead_process_runs("finetune", keep=runs["current"])) == sorted([runs["killed"], runs["no_pid"]])
    assert {name: client.get_run(run).info.status for name, run in runs.items()} == {
        "killed": "KILLED", "same_key_alive": "RUNNING", "current": "RUNNING", "no_pid": "KILLED", "other_host": "RUNNING"}


def test_finetune_runs_of_dead_processes_of_either_mode_are_closed_as_killed(tracking_store) -> None:
    """Adapter mode has no checkpoint lock: a RUNNING run is an orphan only when the pid it recorded is gone
    (a queued experiment training alongside, alive, keeps its run). A full-mode run killed -9 is closed by the next
    finetune whatever its mode (README), and a run of another stage is left alone."""
    import os

    client, experiment, host = tracking_store
    gone = str(dead_pid())
    runs = {name: client.create_run(experiment, tags={"stage": stage, "mode": mode, "host": where, "pid": pid}).info.run_id
            for name, stage, mode, where, pid in [
                ("killed", "finetune", "adapter", host, gone), ("alive", "finetune", "adapter", host, str(os.getpid())),
                ("current", "finetune", "adapter", host, gone), ("full", "finetune", "full", host, gone),
                ("other_host", "finetune", "adapter", "elsewhere", gone), ("evaluate", "evaluate", "", host, gone)]}
    assert sorted(tracking.close_dead_process_runs("finetune", keep=runs["current"])) == sorted([runs["killed"], runs["full"]])
    assert {name: client.get_run(run).info.status for name, run in runs.items()} == {
        "killed": "KILLED", "alive": "RUNNING", "current": "RUNNING", "full": "KILLED", "other_host": "RUNNING", "evaluate": "RUNNING"}
    # evaluate's own runs (a model evaluated again) killed -9: closed by the next evaluate, a live one's left alone
    alive = client.create_run(experiment, tags={"stage": "evaluate", "host": host, "pid": str(os.getpid())}).info.run_id
    assert tracking.close_dead_process_runs("evaluate") == [runs["evaluate"]]
    assert (client.get_run(runs["evaluate"]).info.status, client.get_run(alive).info.status) == ("KILLED", "RUNNING")


# ------------------------------------------------------------------ the DVC cache


def cache_files(project: Path) -> list[Path]:
    return [p for p in (project / ".dvc/cache/files/md5").rglob("*") if p.is_file() and not p.name.endswith(".dir")]


def test_an_output_edited_in_place_cannot_damage_the_cache(tmp_path: Path) -> None:
    """The issue's scenario: an output restored by DVC, then truncated in place. DVC must see the
    change and recompute, and every cache file must still hash to its name."""
    project = make_project(tmp_path / "project")
    write = "python -c \"open('out.bin', 'wb').write(bytes(range(256)) * 4000)\""
    dvc(project, "stage", "add", "-n", "tiny", "-o", "out.bin", write)
    out = project / "out.bin"
    dvc(project, "repro", "tiny")
    original = out.read_bytes()
    for _ in range(2):  # the first repro restores the file from the cache (a hardlink, with the old config)
        os.chmod(out, 0o644)  # what root, or a tool that chmods, can do anyway
        os.truncate(out, 1000)
        for cached in cache_files(project):
            digest = hashlib.md5(cached.read_bytes()).hexdigest()
            assert cached.parent.name + cached.name == digest, f"{cached} was damaged through the workspace"
        status = dvc(project, "status", "tiny").stdout
        assert "modified" in status and "out.bin" in status, status
        dvc(project, "repro", "tiny")
        assert out.read_bytes() == original
    assert "up to date" in dvc(project, "status", "tiny").stdout


def test_dvc_config_uses_copies_not_links() -> None:
    config = (ROOT / ".dvc/config").read_text()
    assert 'type = "reflink,copy"' in config and "hardlink,symlink" in config  # the opt-in is documented


def test_a_stage_that_cannot_resume_does_not_promise_to_continue(tmp_path: Path) -> None:
    """clean keeps nothing of a stopped run: "rerun to continue" would promise work that is lost."""
    code = "from arxiv_embed.errors import START_OVER, run\ndef main():\n    raise KeyboardInterrupt\nrun(main, 'clean', START_OVER)\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=PYTHON_ENV, capture_output=True, text=True)
    assert result.returncode == 130
    assert result.stderr.strip() == "clean: interrupted (Ctrl-C); no output is half-written (each is replaced whole or left as it was), a rerun starts this stage over"


def test_same_weights_point_to_the_run_that_holds_their_evaluation(tracking_store) -> None:
    """A retrain of weights an experiment run to finetune only trained first: the tag names the run evaluated
    (there is one) or says none is, never a run without the evaluation as if it held it."""
    client, experiment, _ = tracking_store
    trained_only, evaluated, current = (client.create_run(experiment, tags={"stage": "finetune"}).info.run_id for _ in range(3))
    for run_id in (trained_only, current):
        client.set_tag(run_id, tracking.WEIGHTS_TAG, "w" * 64)
    assert tracking.tag_weights(current, "w" * 64) == (trained_only, False)  # none evaluated: the first to train them
    client.set_tag(evaluated, tracking.WEIGHTS_TAG, "w" * 64)
    client.log_metric(evaluated, "eval.delta.triplet.accuracy", 0.03)
    assert tracking.tag_weights(current, "w" * 64) == (evaluated, True)
    assert client.get_run(current).data.tags[tracking.SAME_WEIGHTS_TAG] == evaluated
    assert tracking.tag_weights(trained_only, "v" * 64) is None


def test_the_trainer_logs_each_metric_once_a_step(tracking_store) -> None:
    """transformers puts `epoch` in the step's log, the evaluation's and the final summary's, all at one step."""
    from types import SimpleNamespace

    import mlflow

    from arxiv_embed.training.trainer import mlflow_callback

    client, experiment, _ = tracking_store
    callback, state = mlflow_callback(), SimpleNamespace(is_world_process_zero=True, global_step=2)
    with mlflow.start_run(experiment_id=experiment) as run:
        for logs in ({"loss": 1.0, "epoch": 0.5}, {"eval_triplet_cosine_accuracy": 0.9, "epoch": 0.5}, {"train_runtime": 3.0, "epoch": 0.5}):
            callback.on_log(None, state, None, logs=logs)
        state.global_step = 3
        callback.on_log(None, state, None, logs={"loss": 0.8, "epoch": 0.75})
        mlflow.flush_async_logging()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "epoch")] == [(2, 0.5), (3, 0.75)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 3]
