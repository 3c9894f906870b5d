"""Experiments as users run them: the headline metrics DVC prints, one MLflow store for every way a
stage runs (queued experiments in parallel included), and a DVC remote shared by two clones."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from arxiv_embed import paths, tracking
from arxiv_embed.evaluation.headline import METRICS, headline
from arxiv_embed.models import weights_sha256

from .conftest import dvc, ran_stages, run

# README (Experiments): the columns a sweep's table leaves out: intermediate files' hashes, columns the same in every
# row, and the runtime records' MLflow ids, registry versions, reuse and resume counts, seconds and rates (wall_time_s stays).
SWEEP_DROP = "^(data|models|metrics)/|^(Executor|State|Created)$|^(mlflow|registered|reused|resumed|trained)_|.*_(seconds|per_second)$"

# --- the headline -------------------------------------------------------------------------------


def report(base: float, tuned: float) -> dict:
    def side(value: float) -> dict:
        return {"triplet": {"accuracy": value, "accuracy_hard": value - 0.1}, "category_retrieval": {"ndcg@10": value, "mrr@10": 0.9},
                "classification": {"macro_f1_supported": value / 2, "macro_f1": 0.1}, "title_to_abstract": {"ndcg@10": value + 0.1}}
    return {"base": side(base), "finetuned": side(tuned), "delta": {}}


def test_headline_holds_base_and_delta_only() -> None:
    out = headline(report(0.6, 0.65))
    assert out == {
        "base": {"triplet_acc": 0.6, "category_ndcg": 0.6, "macro_f1": 0.3, "title_ndcg": 0.7},
        "delta": {"triplet_acc": 0.05, "category_ndcg": 0.05, "macro_f1": 0.025, "title_ndcg": 0.05},
    }


def test_headline_leaves_out_what_is_missing() -> None:
    partial = report(0.6, 0.5)
    del partial["finetuned"]["classification"]["macro_f1_supported"]
    out = headline(partial)
    assert set(out) == {"base", "delta"} and set(out["delta"]) == set(METRICS) - {"macro_f1"}
    assert out["delta"]["category_ndcg"] == pytest.approx(-0.1)


# --- one tracking store ---------------------------------------------------------------------------


def test_the_store_is_the_project_roots_from_a_dvc_temp_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert paths.project_root() == (tmp_path / "project").resolve()  # found from the path alone
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))  # what DVC sets for every stage
    assert tracking.tracking_uri() == f"sqlite:///{(tmp_path / 'elsewhere').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_runs_are_tagged_with_the_dvc_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert tracking.dvc_tags() == {}  # plain `dvc repro`
    monkeypatch.setenv("DVC_EXP_NAME", "lr-2e-5")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    assert tracking.dvc_tags() == {"dvc_experiment": "lr-2e-5", "dvc_baseline_rev": "a" * 40}


# --- the real DAG: experiments, queue, remote ---------------------------------------------------------


def committed_copy(pipeline: Path, dest: Path, fresh_store: bool = True) -> Path:
    """A copy of the tiny DAG's project with its run committed as the baseline (dvc.lock, metrics),
    as a user's repository holds it; a fresh tracking store, or (fresh_store=False) the runs the baseline logged."""
    store = ("mlflow.db*", "mlruns") if fresh_store else ()
    shutil.copytree(pipeline, dest, symlinks=True, ignore=shutil.ignore_patterns(*store, "search-index"))
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "baseline run"], dest)
    return dest


@pytest.mark.slow
def test_metrics_show_prints_the_headline_and_the_runtime_records(pipeline: Path) -> None:
    shown = json.loads(dvc(pipeline, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    runtime = [f"metrics/runtime/{stage}.json" for stage in ("embed_base", "finetune", "push")]
    assert sorted(files) == ["metrics/headline.json", *runtime]
    assert files["metrics/headline.json"]["data"] == json.loads((pipeline / "metrics/headline.json").read_text())
    assert files["metrics/runtime/finetune.json"]["data"]["wall_time_s"] > 0


@pytest.mark.slow
def test_a_stage_run_again_writes_the_same_cached_outputs_and_a_new_runtime_record(pipeline: Path, tmp_path: Path) -> None:
    """What a run makes depends on its inputs alone; how it went (MLflow run, wall times, reuse) is in the git-tracked
    runtime record. So a fresh clone's run of the committed params hashes as the committed run, and `dvc checkout`
    of that run works there."""
    project = committed_copy(pipeline, tmp_path / "project")

    def locked() -> dict[str, dict[str, str]]:
        stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
        return {name: {out["path"]: out["md5"] for out in stages[name]["outs"]} for name in ("embed_base", "finetune")}

    before, runtime_before = locked(), json.loads((project / "metrics/runtime/finetune.json").read_text())
    shutil.rmtree(project / paths.EMBED_REUSE)  # as in a fresh clone: every text encoded again, none reused
    dvc(project, "repro", "-f", "-s", "embed_base")
    dvc(project, "repro", "-f", "-s", "finetune")  # a new MLflow run, the same weights
    after, runtime_after = locked(), json.loads((project / "metrics/runtime/finetune.json").read_text())
    runtime = {f"metrics/runtime/{stage}.json" for stage in ("embed_base", "finetune")}
    assert {stage: {path: md5 for path, md5 in outs.items() if path not in runtime} for stage, outs in after.items()} == \
        {stage: {path: md5 for path, md5 in outs.items() if path not in runtime} for stage, outs in before.items()}
    assert runtime_after["mlflow_run_id"] != runtime_before["mlflow_run_id"]
    encoded = json.loads((project / "metrics/runtime/embed_base.json").read_text())
    assert encoded["reused_texts"] == 0 and encoded["texts_per_second"] > 0

    # Trained again: DVC does not evaluate the same weights again, so the new MLflow run names the one that trained them
    # first (the one evaluated; this copy's fresh store starts with the run above).
    again = dvc(project, "repro", "-f", "-s", "finetune")
    first, second = runtime_after["mlflow_run_id"], json.loads((project / "metrics/runtime/finetune.json").read_text())["mlflow_run_id"]
    assert f"the same weights as MLflow run {first}" in again.stdout, again.stdout[-2000:]
    from mlflow import MlflowClient

    client, weights = MlflowClient(f"sqlite:///{project / 'mlflow.db'}"), weights_sha256(project / paths.FINETUNED)
    assert client.get_run(first).data.tags[tracking.WEIGHTS_TAG] == weights and tracking.SAME_WEIGHTS_TAG not in client.get_run(first).data.tags
    assert client.get_run(second).data.tags[tracking.WEIGHTS_TAG] == weights
    assert client.get_run(second).data.tags[tracking.SAME_WEIGHTS_TAG] == first


@pytest.mark.slow
def test_a_run_made_before_comes_back_from_the_run_cache_and_a_refused_push_keeps_the_release(pipeline: Path, tmp_path: Path) -> None:
    """A change reverted (or a sweep point run again) is restored by DVC's run-cache, every stage from clean to
    evaluate: nothing cleans, trains or scores again. A push its gate refuses leaves the last release in place."""
    project = committed_copy(pipeline, tmp_path / "project", fresh_store=False)  # the store the restored runs logged to
    params = project / "params.yaml"
    baseline, headline_before = params.read_text(), (project / "metrics/headline.json").read_text()
    runtime_before = (project / "metrics/runtime/finetune.json").read_text()
    raw = yaml.safe_load(baseline)
    raw["clean"]["min_abstract_words"] = 60
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert {"clean", "split", "make_triplets", "embed_base", "finetune", "evaluate"} <= set(ran_stages(dvc(project, "repro")))
    params.write_text(baseline)
    back = dvc(project, "repro")
    assert ran_stages(back) == ["params_check", "push"], back.stdout  # both persist their output: no run-cache
    assert "Stage 'finetune' is cached - skipping run" in back.stdout
    assert (project / "metrics/headline.json").read_text() == headline_before
    # The restored model's runtime record: the run that trained it, which evaluate and push log into.
    assert (project / "metrics/runtime/finetune.json").read_text() == runtime_before
    assert dvc(project, "status").stdout.strip() == "Data and pipelines are up to date."

    release = {path.name: path.read_bytes() for path in (project / "models/release").iterdir() if path.is_file()}
    report = json.loads((project / "metrics/evaluate.json").read_text())
    report["delta_ci95"][raw["push"]["gate"]["metric"]] = [-0.05, -0.01]  # an evaluation the gate refuses
    (project / "metrics/evaluate.json").write_text(json.dumps(report))
    refused = dvc(project, "repro", "-s", "push", check=False)
    assert refused.returncode != 0 and "quality gate failed" in refused.stdout + refused.stderr
    assert {path.name: path.read_bytes() for path in (project / "models/release").iterdir() if path.is_file()} == release


def wait_for_queue(project: Path, timeout_s: float) -> str:
    """`dvc queue status` once no task is queued or running; after `timeout_s`, a failure carrying the status and the
    celery workers' own logs (DVC keeps them in .dvc/tmp/exps/celery: a worker that died shows only there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status", timeout_s=120).stdout
        tasks = [line for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
        if tasks and not any(word in line for line in tasks for word in ("Queued", "Running")):
            return status
        time.sleep(5)
    workers = "\n".join(f"{log.name}:\n{log.read_text(errors='replace')[-3000:]}"
                        for log in sorted((project / ".dvc/tmp/exps/celery").glob("*.out")))
    raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}\n{workers}")


@pytest.mark.slow
def test_two_queued_experiments_run_in_parallel_into_the_projects_store(pipeline: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    project = committed_copy(pipeline, tmp_path / "project")
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    # A param the default finetune (mode=adapter, loss supcon) trains with, so each experiment's metrics differ.
    rates = {"tiny-a": 0.05, "tiny-b": 0.2}
    for name, rate in rates.items():
        dvc(project, "exp", "run", "--queue", "-n", name, "-S", f"finetune.temperature={rate}")
    try:  # `queue start` returns once its workers run (harness.run): both experiments take ~1.5 min here
        dvc(project, "queue", "start", "-j", "2", timeout_s=120)
        status = wait_for_queue(project, timeout_s=600)
    finally:  # --kill: workers left running would load the CPU of every later test
        dvc(project, "queue", "stop", "--kill", check=False, timeout_s=120)
    assert status.count("Success") == 2, status + "\n" + dvc(project, "queue", "logs", "tiny-a", check=False).stdout[-3000:]

    store = project / "mlflow.db"
    assert store.exists() and not list((project / ".dvc" / "tmp").rglob("mlflow.db"))
    client = MlflowClient(f"sqlite:///{store}", registry_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = {r.data.tags.get("dvc_experiment"): r for r in client.search_runs([experiment.experiment_id])}
    assert {"tiny-a", "tiny-b"} <= runs.keys()
    for name, rate in rates.items():
        tagged = runs[name]
        assert tagged.info.status == "FINISHED" and tagged.data.tags["dvc_baseline_rev"] == baseline
        assert float(tagged.data.params["finetune.temperature"]) == rate  # finetune logged here...
        assert "eval.finetuned.category_retrieval.ndcg_at_10" in tagged.data.metrics  # ...and evaluate into the same run
    versions = client.search_model_versions("name = 'arxiv-embed'")
    assert sorted(v.tags.get("dvc_experiment") for v in versions) == ["tiny-a", "tiny-b"]  # push registered both
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    names = {exp.get("name") for row in shown for group in row.get("experiments") or [] for exp in group.get("revs", [])}
    assert {"tiny-a", "tiny-b"} <= names
    # The headline of a sweep on one screen: a pipe gets the table at its natural width, uncut. The
    # hashes of intermediate deps (models/finetuned, metrics/evaluate.json: 32 characters each) change
    # with every experiment too, so they are dropped, and so is Executor (README: Experiments). With
    # only the hashes dropped, four deltas that all change reach 164 columns. A delta that two runs of a tiny
    # test set round to the same value is not a changed column: the table must hold exactly the ones that changed.
    rows = [*shown, *(exp for row in shown for group in row.get("experiments") or [] for exp in group.get("revs", []))]
    deltas = [row["data"]["metrics"]["metrics/headline.json"]["data"]["delta"] for row in rows]
    changed = {name for name in deltas[0] if len({delta[name] for delta in deltas}) > 1}
    assert len(changed) >= 3, deltas  # enough columns for the width below to be a test
    assert f'--hide-failed --drop "{SWEEP_DROP}"' in (Path(__file__).parents[1] / "README.md").read_text()
    table = dvc(project, "exp", "show", "--only-changed", "--hide-failed", "--drop", SWEEP_DROP).stdout
    assert {name for name in deltas[0] if f"delta.{name}" in table} == changed, table
    assert "finetune.temperature" in table and "wall_time_s" in table and "Executor" not in table and "mlflow_run_id" not in table
    assert "train_seconds" not in table and "registered_version" not in table and "trained_with" not in table
    assert max(len(line.rstrip()) for line in table.splitlines()) <= 160, table


@pytest.mark.slow
def test_a_temp_experiment_reuses_and_keeps_the_projects_vectors(pipeline: Path, tmp_path: Path) -> None:
    """embed_base's reusable vectors live in the project's root, not in the temporary copy a `--temp` or queued run
    works in: a sweep point with another sample encodes only what no earlier run encoded, and leaves its vectors for
    the next point."""
    from arxiv_embed.embeddings import TextVectors

    project = committed_copy(pipeline, tmp_path / "project")
    stores = [folder for folder in (project / "data/embeddings/reuse").iterdir() if folder.is_dir()]
    assert len(stores) == 1 and len(before := TextVectors.load(stores[0])) > 40
    dvc(project, "exp", "run", "--temp", "-n", "fewer-test-papers", "-S", "evaluate.max_test_papers=40", "embed_base")
    refs = run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], project).stdout.split("\n")
    rev = next(line.split()[0] for line in refs if line.endswith("/fewer-test-papers"))
    from dvc.api import read as dvc_read  # the stage summaries are DVC-cached outputs: read through the cache

    metrics = json.loads(dvc_read("metrics/embed_base.json", repo=str(project), rev=rev))
    runtime = json.loads(dvc_read("metrics/runtime/embed_base.json", repo=str(project), rev=rev))  # git-tracked: the exp commit's
    assert metrics["test_sample_papers"] == 40 and runtime["reused_texts"] == metrics["texts"] > 0
    # This run's vectors, kept in the project for the next, first; then the earlier run's others (reuse_max_texts).
    after = TextVectors.load(stores[0])
    assert len(after) == len(before) > metrics["texts"] and set(after.texts) == set(before.texts)
    np.testing.assert_array_equal(after(before.texts), before(before.texts))


def test_embed_base_killed_in_a_temp_workspace_resumes_from_its_chunks_in_the_next(pipeline: Path, tmp_path: Path, monkeypatch,
                                                                                  encoder_calls) -> None:
    """A queued or `--temp` sweep point works in a copy DVC deletes: its finished chunks are the project's, so the
    point run again encodes only what the killed one had not, and leaves no chunk of its own once its vectors are kept."""
    import yaml

    from stages import embed_base

    project = tmp_path / "project"
    shutil.copytree(pipeline, project, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlruns", "search-index", ".git"))
    shutil.rmtree(project / paths.EMBED_REUSE)  # nothing to reuse: every text is encoded
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["embed_base"]["chunk_size"] = 256
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    def temp_workspace(name: str) -> Path:  # as `dvc exp run --temp` makes one, with DVC_ROOT set for its stages
        workspace = project / ".dvc" / "tmp" / "exps" / name
        shutil.copytree(project, workspace, symlinks=True, ignore=shutil.ignore_patterns(".dvc", "chunks"))
        monkeypatch.chdir(workspace)
        monkeypatch.setenv("DVC_ROOT", str(project))
        return workspace

    killed = temp_workspace("tmp-killed")
    encoder_calls.interrupt_at = 3  # Ctrl-C in the third chunk (chunk_size 256)
    with pytest.raises(KeyboardInterrupt):
        embed_base.main()
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(killed)  # DVC deletes the copy of a failed point
    kept = list((project / paths.EMBED_WORK).glob("run-*/chunk-*.npy"))
    assert len(kept) == 2  # the two chunks finished before the kill, in the run's folder

    temp_workspace("tmp-again")
    encoder_calls.clear()
    encoder_calls.interrupt_at = None
    embed_base.main()
    encoded = sum(len(texts) for texts in encoder_calls)
    written = json.loads(Path(paths.metrics_file("embed_base")).read_text())
    assert encoded == written["texts"] - 2 * 256  # the killed point's chunks were not encoded again
    runtime = json.loads(Path(paths.runtime_file("embed_base")).read_text())
    assert (runtime["reused_texts"], runtime["resumed_texts"]) == (0, 2 * 256)
    # The rate is of the texts encoded now: the resumed chunks took no time.
    assert runtime["texts_per_second"] == pytest.approx(encoded / runtime["encode_seconds"], rel=0.05)
    assert not (project / paths.EMBED_WORK).exists()  # its chunks dropped once the store holds its vectors
    assert any((project / paths.EMBED_REUSE).iterdir())


def test_a_run_s_chunk_folder_goes_when_it_ends_and_stopped_runs_beyond_the_newest_two_go_with_it(tmp_path: Path, capsys) -> None:
    """Each run encodes into a folder of its own (the same one whenever it is run again, so a killed run resumes). A
    run that ends well deletes its folder and stopped runs' beyond the newest two, which nothing else would remove;
    a folder another run holds stays, however old."""
    import fcntl
    import os
    import time

    from arxiv_embed.embeddings import CHUNK_LOCK, chunk_folder
    from arxiv_embed.run_folders import in_use

    from .test_reliability import dead_pid

    work = tmp_path / "chunks"
    for age, name in enumerate(["run-stopped-1", "run-stopped-2", "run-stopped-3", "run-encoding"], start=1):
        (work / name).mkdir(parents=True)
        (work / name / "chunk-a.npy").write_bytes(b"xy")
        os.utime(work / name, (time.time() - age * 100, time.time() - age * 100))
    encoding = open(work / "run-encoding" / CHUNK_LOCK, "a+", encoding="utf-8")  # another run, encoding now
    fcntl.flock(encoding, fcntl.LOCK_SH)
    flat, killed, writing = work / "chunk-flat.npy", work / f".chunk-c.npy.tmp-{dead_pid()}", work / f".chunk-d.npy.tmp-{os.getpid()}"
    for leftover in (flat, killed, writing):  # the flat layout's, before run folders: no run reads them
        leftover.write_bytes(b"xy")

    with pytest.raises(RuntimeError), chunk_folder(work, "key", ["a", "b"], what="test") as failed:
        (failed / "chunk-b.npy").write_bytes(b"xy")
        assert in_use(failed, CHUNK_LOCK)
        raise RuntimeError("killed")
    assert (failed / "chunk-b.npy").exists()  # a run that failed keeps its chunks for its rerun
    with chunk_folder(work, "key", ["a", "b"], what="test") as again:
        assert again == failed and (again / "chunk-b.npy").exists()
    assert sorted(path.name for path in work.iterdir()) == sorted(["run-stopped-1", "run-stopped-2", "run-encoding", writing.name])
    assert "deleted 1 stopped runs' chunks" in capsys.readouterr().out
    encoding.close()
    writing.unlink()
    with chunk_folder(work, "other", ["c"], what="test"):
        pass
    # The newest stopped two: the run that was encoding until now (its lock file made it newest), then stopped-1.
    assert sorted(path.name for path in work.iterdir()) == ["run-encoding", "run-stopped-1"]
    shutil.rmtree(work / "run-encoding"), shutil.rmtree(work / "run-stopped-1")
    with chunk_folder(work, "other", ["c"], what="test"):
        pass
    assert not work.exists()  # nothing left: the folder goes too


@pytest.mark.slow
def test_a_local_remote_carries_the_run_to_a_second_clone(pipeline: Path, tmp_path: Path) -> None:
    first = committed_copy(pipeline, tmp_path / "first")
    dvc(first, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    run(["git", "commit", "-qam", "DVC remote"], first)
    dvc(first, "push")
    run(["git", "clone", "-q", str(first), str(tmp_path / "second")], tmp_path)
    second = tmp_path / "second"
    assert not (second / "models" / "finetuned").exists()
    dvc(second, "pull")
    assert (second / "models" / "release" / "manifest.json").exists()
    assert "Data and pipelines are up to date" in dvc(second, "status").stdout
    assert "Running stage" not in dvc(second, "repro", "--dry").stdout
    # The pulled model names its run in the first clone's MLflow store: push registers it here through a stand-in.
    trained_in = json.loads((second / "metrics/runtime/finetune.json").read_text())["mlflow_run_id"]
    pushed = dvc(second, "repro", "-f", "-s", "push").stdout
    assert f"MLflow run {trained_in}, which trained models/finetuned" in pushed and "registered arxiv-embed version 1" in pushed
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{second / 'mlflow.db'}")
    [version] = client.search_model_versions("name = 'arxiv-embed'")
    assert client.get_run(version.run_id).data.tags["trained_in_run"] == trained_in
