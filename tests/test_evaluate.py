"""The evaluate_base / evaluate stages end to end, on real papers from the 2007 sample.

Until the upstream stages run, a fixture writes tiny split and triplet files the way split and
make_triplets do, and a perturbed copy of the bundled model stands in for the fine-tuned one.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from arxiv_embed import paths, tracking
from tests.harness import deep_update, params_with

from .conftest import dvc, make_project, ran_stages, run
from .test_lenses import sample_papers

RETRIEVAL_KEYS = {"mrr@1", "mrr@10", "ndcg@1", "ndcg@10", "recall@1", "recall@10", "map@100"}
MODEL_KEYS = {
    "triplet": {"accuracy", "accuracy_random", "accuracy_hard"},
    "title_to_abstract": RETRIEVAL_KEYS,
    "category_retrieval": RETRIEVAL_KEYS,
    "classification": {"accuracy", "macro_f1", "macro_f1_supported", "weighted_f1", "supported_labels"},
    "clustering": {"homogeneity", "completeness", "ari", "nmi"},
    "binary": {"title_ndcg@10", "category_ndcg@10", "title_rescored_ndcg@10", "category_rescored_ndcg@10", "storage_ratio"},
}
PLOTS = {"learning_curve.png", "confusion_matrix.png", "embeddings_base.png", "embeddings_finetuned.png"}
EVAL_PARAMS = {
    "model": {"max_seq_length": 48},
    "finetune": {"mode": "full"},  # the stand-in fine-tuned model below is a whole model, not base + adapter
    "evaluate": {"batch_size": 32, "max_train_papers": 40, "learning_curve_sizes": [2, 4], "min_label_support": 5},
}


def assert_report_shape(report: dict) -> None:
    assert set(report) == {"base", "finetuned", "delta", "delta_ci95", "finetuned_weights_sha256"}
    for side in ("base", "finetuned", "delta"):
        assert set(report[side]) == set(MODEL_KEYS), side
        for section, keys in MODEL_KEYS.items():
            assert set(report[side][section]) == keys, (side, section)
    # Every delta has a paired interval (means over items, F1 and clustering scores over papers) but the two constants'.
    assert set(report["delta_ci95"]) == set(flat(report["delta"])) - {"binary.storage_ratio", "classification.supported_labels"}
    for name, (low, high) in report["delta_ci95"].items():
        assert low <= flat(report["delta"])[name] + 1e-9 and flat(report["delta"])[name] <= high + 1e-9, name
    for side in ("base", "finetuned"):
        for name, value in flat(report[side]).items():
            if name == "binary.storage_ratio":
                assert value == pytest.approx(384 * 4 / 56)  # float32 vs RaBitQ's 48 bytes of bits + 2 floats
            elif name == "classification.supported_labels":
                assert value >= 1
            else:
                assert 0.0 <= value <= 1.0 or (name == "clustering.ari" and -0.5 <= value <= 1.0), (side, name, value)
    base, finetuned = flat(report["base"]), flat(report["finetuned"])
    assert flat(report["delta"]) == pytest.approx({name: finetuned[name] - base[name] for name in base})
    assert any(abs(change) > 1e-6 for change in flat(report["delta"]).values()), "base and fine-tuned numbers are identical"


def flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def write_inputs(project: Path, papers: pl.DataFrame) -> None:
    """Split and test-triplet files as split/make_triplets write them: 8 test papers per label."""
    papers = papers.with_columns(position=pl.int_range(pl.len()).over("label"))
    test = papers.filter(pl.col("position") < 8).drop("position")
    (project / "data/split").mkdir(parents=True)
    test.write_parquet(project / "data/split/test.parquet")
    papers.filter(pl.col("position") >= 8).drop("position").write_parquet(project / "data/split/train.parquet")
    (project / "data/triplets").mkdir(parents=True)
    papers.filter(pl.col("position") >= 8).drop("position").write_parquet(project / "data/triplets/train_papers.parquet")

    labels = test["label"].unique(maintain_order=True).to_list()
    by_label = {label: test.filter(pl.col("label") == label) for label in labels}
    rows = []
    for i, paper in enumerate(test.iter_rows(named=True)):
        same, other = by_label[paper["label"]], by_label[labels[(labels.index(paper["label"]) + 1) % len(labels)]]
        positive, negative = same.row((i + 1) % same.height, named=True), other.row(i % other.height, named=True)
        rows.append(
            {"anchor": paper["abstract"], "positive": positive["abstract"], "negative": negative["abstract"],
             "anchor_id": paper["id"], "positive_id": positive["id"], "negative_id": negative["id"],
             "label": paper["label"], "negative_label": negative["label"], "negative_type": ("random", "hard")[i % 2]}
        )
    pl.DataFrame(rows).write_parquet(project / "data/triplets/test_triplets.parquet")


def test_the_files_row_order_changes_no_item_the_lenses_read(tmp_path, monkeypatch, kaggle_sample) -> None:
    """The same papers listed in another order are the same items, in the same order: the bootstrap draws by position."""
    from arxiv_embed.evaluation.data import load_eval_data

    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path, sample_papers(kaggle_sample, per_label=18, n_labels=4))
    first = load_eval_data(max_test_papers=20, max_train_papers=30, seed=1)  # 32 test papers and 40 train: both sampled
    for name in ("data/split/test.parquet", "data/triplets/train_papers.parquet"):
        pl.read_parquet(name).reverse().write_parquet(name)
    again = load_eval_data(max_test_papers=20, max_train_papers=30, seed=1)
    assert (first.test.height, first.train.height) == (20, 30)
    assert again.fingerprint() == first.fingerprint() and again.test.equals(first.test)


def save_perturbed_copy(model_dir: Path, dest: Path) -> None:
    """The bundled model with noise on its word embeddings: a stand-in "fine-tuned" model."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    with torch.no_grad():
        weights = model[0].auto_model.embeddings.word_embeddings.weight
        weights.add_(0.02 * torch.randn(weights.shape, generator=torch.Generator().manual_seed(0)))
    model.save(str(dest))


def start_finetune_run(project: Path) -> str:
    """A run in the project's MLflow store standing in for the one finetune logs into."""
    code = (
        "import mlflow; from arxiv_embed.tracking import configure_tracking; configure_tracking(); "
        "run = mlflow.start_run(run_name='finetune'); mlflow.end_run(); print(run.info.run_id)"
    )
    return run([sys.executable, "-c", code], project).stdout.strip().splitlines()[-1]


def write_runtime_record(root: Path, run_id: str) -> None:
    """finetune's runtime record (metrics/runtime/finetune.json): the run evaluate logs into."""
    (root / paths.RUNTIME_DIR).mkdir(parents=True, exist_ok=True)
    (root / paths.FINETUNE_RUNTIME).write_text(json.dumps({"mlflow_run_id": run_id, "wall_time_s": 1.0}))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, kaggle_sample, base_model) -> Path:
    """A project copy with tiny inputs, after `evaluate --model base` and `--model finetuned`."""
    project = make_project(tmp_path_factory.mktemp("evaluate") / "project", EVAL_PARAMS)
    write_inputs(project, sample_papers(kaggle_sample, per_label=18, n_labels=4))
    base_dir = tmp_path_factory.mktemp("base-model")
    base_model.save(str(base_dir))
    save_perturbed_copy(base_dir, project / "models/finetuned")
    run_id = start_finetune_run(project)
    write_runtime_record(project, run_id)
    run([sys.executable, "-m", "stages.embed_base"], project)
    for which in ("base", "finetuned"):
        run([sys.executable, "-m", "stages.evaluate", "--model", which], project)
    return project


def test_evaluate_writes_the_report(evaluated):
    report = json.loads((evaluated / "metrics/evaluate.json").read_text())
    assert_report_shape(report)
    # Which weights were scored: push refuses to gate on an evaluation of another model. Not the MLflow run: a rerun that
    # trains the same weights writes the same report.
    from arxiv_embed.models import weights_sha256

    assert report["finetuned_weights_sha256"] == weights_sha256(evaluated / "models/finetuned")
    assert json.loads((evaluated / "data/eval/base/metrics.json").read_text()) == report["base"]
    assert report["base"]["title_to_abstract"]["ndcg@10"] > 0.8  # titles find their own abstract

    table = (evaluated / "metrics/evaluate.md").read_text()
    assert "| category_retrieval.ndcg@10 |" in table and "| binary.storage_ratio | 27.4286 | 27.4286 | +0.0000 |  |" in table

    curve = pl.read_csv(evaluated / "metrics/learning_curve.csv")
    assert curve.columns == ["train_per_label", "base", "finetuned"]
    assert curve["train_per_label"].to_list() == [2, 4, 10]  # 10 train papers per label = "all"
    assert curve["finetuned"][-1] == pytest.approx(report["finetuned"]["classification"]["macro_f1"])

    confusion = pl.read_csv(evaluated / "metrics/confusion.csv")
    assert confusion.columns == ["actual", "predicted"] and confusion.height == 32
    assert {path.name for path in (evaluated / "metrics/plots").iterdir()} == PLOTS
    for name in PLOTS:
        assert (evaluated / "metrics/plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The fine-tuned model's resumable chunks (mode=full) are gone once scored: each run would leave a set.
    assert not (evaluated / "data/embeddings/chunks-finetuned").exists() and not (evaluated / "data/embeddings/chunks").exists()


def test_a_full_mode_evaluate_killed_in_a_temp_workspace_resumes_in_the_next(evaluated, tmp_path, monkeypatch, encoder_calls):
    """finetune.mode=full: evaluate encodes with the fine-tuned model. A `--temp` or queued point works in a copy DVC
    deletes when it fails, so the chunks it finished are the project's, and the point run again encodes the rest only."""
    import mlflow

    from arxiv_embed import embeddings
    from stages import evaluate

    project = tmp_path / "project"
    shutil.copytree(evaluated, project, symlinks=True)
    work = project / "data/embeddings/chunks-finetuned"
    (work / "run-of-a-stopped-run").mkdir(parents=True)
    (work / "run-of-a-stopped-run" / "chunk-a.npy").write_bytes(b"xy")
    monkeypatch.setattr(embeddings, "CHUNK_SIZE", 32)  # several chunks: encoder_calls counts them

    def temp_workspace(name: str) -> Path:  # as `dvc exp run --temp` makes one, with DVC_ROOT set for its stages
        workspace = project / ".dvc" / "tmp" / "exps" / name
        shutil.copytree(project, workspace, symlinks=True, ignore=shutil.ignore_patterns(".dvc", "mlflow.db*", "mlruns", "chunks*"))
        monkeypatch.chdir(workspace)
        monkeypatch.setenv("DVC_ROOT", str(project))
        return workspace

    killed = temp_workspace("tmp-killed")
    encoder_calls.interrupt_at = 3
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous_uri = mlflow.get_tracking_uri()
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate.main(["--model", "finetuned"])
        monkeypatch.chdir(tmp_path)
        shutil.rmtree(killed)
        assert len(list(work.glob("run-*/chunk-*.npy"))) == 1 + 2  # the two chunks finished before the kill

        again = temp_workspace("tmp-again")
        encoder_calls.clear()
        encoder_calls.interrupt_at = None
        evaluate.main(["--model", "finetuned"])  # logs into the project's MLflow store
    finally:
        mlflow.set_tracking_uri(previous_uri)
    params = evaluate.load(evaluate.EvaluateParams)
    texts = evaluate.load_eval_data(params.evaluate.max_test_papers, params.evaluate.max_train_papers, params.shared.seed).texts()
    assert sum(len(batch) for batch in encoder_calls) == len(texts) - 2 * 32  # the killed point's chunks were not encoded again
    scored, whole = (json.loads((folder / "metrics/evaluate.json").read_text())["finetuned"] for folder in (again, evaluated))
    for lens in ("category_retrieval", "title_to_abstract"):  # resumed chunks: the same vectors but for the last bits
        assert scored[lens]["ndcg@10"] == pytest.approx(whole[lens]["ndcg@10"], abs=1e-3)
    assert [path.name for path in work.iterdir()] == ["run-of-a-stopped-run"]  # its own dropped, a stopped run's kept


def test_evaluate_refuses_a_base_scored_otherwise_and_a_model_it_cannot_read(evaluated, tmp_path):
    """`python -m stages.evaluate --model finetuned` (or `dvc repro -s evaluate`) after an evaluate.* change: the base's
    scores are of another sample or lens setting, so its deltas would compare different things."""
    project = tmp_path / "project"
    shutil.copytree(evaluated, project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["min_label_support"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "stages.evaluate", "--model", "finetuned"], project, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "data/eval/base was scored with other evaluate.min_label_support than this evaluation's: run `dvc repro evaluate`" in result.stderr
    params["evaluate"]["min_label_support"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    test = pl.read_parquet(project / "data/split/test.parquet")
    test.with_columns(abstract=pl.col("abstract").str.replace("^", "Revised: ")).write_parquet(project / "data/split/test.parquet")
    result = run([sys.executable, "-m", "stages.evaluate", "--model", "finetuned"], project, check=False)
    assert result.returncode == 1 and "was scored with other items_sha256 than this evaluation's" in result.stderr, result.stderr
    (project / "data/split/test.parquet").unlink()
    test.write_parquet(project / "data/split/test.parquet")
    scope = (project / "data/eval/base/scope.json").read_bytes()
    (project / "data/eval/base/scope.json").unlink()  # saved by a version before scopes
    result = run([sys.executable, "-m", "stages.evaluate", "--model", "finetuned"], project, check=False)
    assert result.returncode == 1 and "data/eval/base was scored by an older version, which saved no scope" in result.stderr
    (project / "data/eval/base/scope.json").write_bytes(scope)
    # The model a finetune.mode=full run saved, scored as if adapter mode had: one line, not a ValueError's traceback.
    params["finetune"]["mode"] = "adapter"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "stages.evaluate", "--model", "finetuned"], project, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "models/finetuned has no adapter (finetune.mode=full saved it) but finetune.mode is adapter" in result.stderr
    params["finetune"]["mode"] = "full"
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_evaluate_logs_into_the_finetune_run(evaluated):
    from mlflow.tracking import MlflowClient

    run_id = tracking.finetune_run_id(evaluated)
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated / 'mlflow.db'}")
    report = json.loads((evaluated / "metrics/evaluate.json").read_text())
    logged = client.get_run(run_id).data.metrics
    assert logged["eval.delta.category_retrieval.ndcg_at_10"] == pytest.approx(report["delta"]["category_retrieval"]["ndcg@10"])
    assert len([name for name in logged if name.startswith("eval.finetuned.")]) == len(flat(report["finetuned"]))
    artifacts = {item.path for item in client.list_artifacts(run_id, "evaluate/plots")}
    assert artifacts == {f"evaluate/plots/{name}" for name in PLOTS}
    finetune_run = client.get_run(run_id)
    assert finetune_run.data.params["evaluate.min_label_support"] == "5" and finetune_run.info.status == "FINISHED"


def test_a_model_evaluated_again_logs_into_a_run_of_its_own(evaluated, monkeypatch):
    """A sweep of evaluate.* alone (finetune restored from DVC's cache) evaluates the same finetune run again:
    its numbers go to a new run nested under that run, never over the first evaluation's."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from stages import evaluate

    run_id = tracking.finetune_run_id(evaluated)
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated / 'mlflow.db'}")
    before = client.get_run(run_id)
    report = json.loads((evaluated / "metrics/evaluate.json").read_text())
    changed = json.loads(json.dumps(report))
    changed["delta"]["category_retrieval"]["ndcg@10"] += 0.5  # as another max_test_papers would score it
    monkeypatch.chdir(evaluated)
    previous_uri = mlflow.get_tracking_uri()
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        evaluate.log_to_mlflow(changed, params_with(deep_update(copy.deepcopy(EVAL_PARAMS), {"evaluate": {"max_test_papers": 50}})),
                               evaluate.finetune_run_id())
    finally:
        mlflow.set_tracking_uri(previous_uri)
    after = client.get_run(run_id)
    assert after.data.metrics == before.data.metrics and after.data.params == before.data.params
    assert (after.info.status, after.info.end_time) == (before.info.status, before.info.end_time)
    [nested] = client.search_runs([after.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert nested.info.status == "FINISHED" and nested.data.tags["finetune_run_id"] == run_id
    assert nested.data.metrics["eval.delta.category_retrieval.ndcg_at_10"] == pytest.approx(report["delta"]["category_retrieval"]["ndcg@10"] + 0.5)
    assert nested.data.params["evaluate.max_test_papers"] == "50"


def test_an_interrupted_evaluate_ends_the_run_it_made(evaluated, monkeypatch):
    """Ctrl-C or SIGTERM (errors.run raises it in the stage) while a nested run is logged: KILLED, not RUNNING for good."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from stages import evaluate

    report = json.loads((evaluated / "metrics/evaluate.json").read_text())
    monkeypatch.chdir(evaluated)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    previous_uri = mlflow.get_tracking_uri()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(mlflow.MlflowClient, "log_batch", interrupted)
            with pytest.raises(KeyboardInterrupt):  # the finetune run holds an evaluation: a nested run is made
                evaluate.log_to_mlflow(report, params_with(EVAL_PARAMS), evaluate.finetune_run_id())
    finally:
        mlflow.set_tracking_uri(previous_uri)
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated / 'mlflow.db'}")
    made = client.search_runs([client.get_experiment_by_name("arxiv-embed").experiment_id], "tags.stage = 'evaluate'",
                              order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert made.info.status == "KILLED" and made.data.tags["pid"] == str(os.getpid()) and made.data.tags["host"]


def test_unknown_run_gets_a_linked_run_and_a_down_server_only_warns(evaluated, monkeypatch, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from stages import evaluate

    report = json.loads((evaluated / "metrics/evaluate.json").read_text())
    monkeypatch.chdir(evaluated)
    elsewhere = evaluated / "trained-elsewhere"  # a runtime record naming a run this store does not have
    write_runtime_record(elsewhere, "0" * 32)
    previous_uri = mlflow.get_tracking_uri()
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        evaluate.log_to_mlflow(report, params_with(EVAL_PARAMS), tracking.finetune_run_id(elsewhere))
        client = MlflowClient(tracking_uri=f"sqlite:///{evaluated / 'mlflow.db'}")
        runs = client.search_runs(
            [client.get_experiment_by_name("arxiv-embed").experiment_id], f"tags.finetune_run_id = '{'0' * 32}'"
        )
        assert len(runs) == 1 and runs[0].data.metrics["eval.base.triplet.accuracy"] == report["base"]["triplet"]["accuracy"]
        assert runs[0].data.tags["mlflow.runName"] == "evaluate"
        # No runtime record at all (deleted by hand): the evaluation still gets a run, and the log says why it is apart.
        evaluate.log_to_mlflow(report, params_with(EVAL_PARAMS), tracking.finetune_run_id(evaluated / "nowhere"))
        assert "(metrics/runtime/finetune.json, which names finetune's run, is missing)" in capsys.readouterr().out

        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing answers
        evaluate.log_to_mlflow(report, params_with(EVAL_PARAMS), tracking.finetune_run_id(elsewhere))
        assert "WARNING: metrics not logged to MLflow" in capsys.readouterr().err
    finally:
        mlflow.set_tracking_uri(previous_uri)


def test_missing_inputs_name_the_stage_to_run(tmp_path):
    project = make_project(tmp_path / "project", EVAL_PARAMS)
    result = run([sys.executable, "-m", "stages.evaluate", "--model", "base"], project, check=False)
    assert result.returncode != 0
    assert "data/split/test.parquet is missing: run `dvc repro split` first" in result.stderr


# --- on the whole DAG -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_project(pipeline) -> Path:
    return pipeline


@pytest.mark.slow
def test_pipeline_metrics_are_read_by_dvc(pipeline_project):
    report = json.loads((pipeline_project / "metrics/evaluate.json").read_text())
    assert_report_shape(report)
    # Not a declared metric (metrics/headline.json is, tests/test_experiments.py): read by name.
    shown = json.loads(dvc(pipeline_project, "metrics", "show", "--json", "metrics/evaluate.json").stdout)
    metrics = next(iter(shown.values()))["data"]["metrics/evaluate.json"]["data"]
    assert metrics["delta"]["category_retrieval"]["ndcg@10"] == report["delta"]["category_retrieval"]["ndcg@10"]


@pytest.mark.slow
def test_an_evaluate_param_reruns_only_the_evaluate_stages(pipeline_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(pipeline_project, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    before = json.loads((project / "metrics/evaluate.json").read_text())
    params["evaluate"]["min_label_support"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Target evaluate: push (downstream, it reads metrics/evaluate.json) is not the question here.
    result = dvc(project, "repro", "evaluate")
    assert sorted(ran_stages(result)) == ["evaluate", "evaluate_base", "params_check"]  # embed_base's vectors are reused
    after = json.loads((project / "metrics/evaluate.json").read_text())
    for model in ("base", "finetuned"):  # the same cached vectors: the same rankings
        assert after[model]["title_to_abstract"] == before[model]["title_to_abstract"]


def test_a_smaller_test_sample_reuses_embed_base_s_vectors_through_dvc(pipeline_project, tmp_path):
    """embed_base keeps its vectors for the next run (data/embeddings/reuse, beside DVC's outputs, which DVC deletes
    before rerunning a stage): a new sample size encodes only the texts they lack (here none: 120 test papers are a
    subset of the ~200 encoded), and does not retrain."""
    project = tmp_path / "project"
    shutil.copytree(pipeline_project, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["max_test_papers"] = 120
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(project, "repro", "evaluate")
    # The train sample's vectors are the same: finetune (its dependency is their fingerprint) is not run again.
    assert ran_stages(result) == ["params_check", "embed_base", "evaluate_base", "evaluate"]
    metrics = json.loads((project / "metrics/embed_base.json").read_text())
    runtime = json.loads((project / "metrics/runtime/embed_base.json").read_text())
    assert metrics["test_sample_papers"] == 120 and runtime["reused_texts"] == metrics["texts"] > 0
    assert runtime["texts_per_second"] is None  # nothing was encoded: no rate to report (0.0 read as a stalled encoder)
