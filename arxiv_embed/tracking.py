"""MLflow set-up shared by finetune, evaluate and push.

Default: one store for the whole project (`sqlite:///<project root>/mlflow.db`, artifacts under
`<project root>/mlruns/`) that needs no server, whichever way a stage runs: `dvc repro`, `dvc exp run`,
`--temp` and queued experiments (which run in `<root>/.dvc/tmp/exps/...` and would otherwise log into
a folder DVC deletes). `MLFLOW_TRACKING_URI` points it at a server; credentials stay in the environment
(`MLFLOW_TRACKING_USERNAME`/`PASSWORD`/`TOKEN`) and are never logged.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse, urlunparse
from arxiv_embed.errors import InputError, UserError, redact_url
from arxiv_embed.files import read_json
from arxiv_embed.paths import FINETUNE_RUNTIME, project_root

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # relative to the project root (see tracking_uri)
DEFAULT_ARTIFACTS = Path("mlruns")
STORE_LOCK = "mlflow.db.lock"  # serialises creating the local store and experiment across processes
EXPERIMENT = "arxiv-embed"
RUN_INFO = "mlflow_run.json"  # in a checkpoint folder (models/checkpoints/<run key>/): the run a resumed attempt continues
MLFLOW_RUN_ID = "mlflow_run_id"  # the key of metrics/runtime/finetune.json naming the run that trained models/finetuned


def finetune_run_id(root: Path | None = None, required: bool = False) -> str | None:
    """The MLflow run that trained models/finetuned (finetune's metrics/runtime/finetune.json, DVC-restored with the
    model). It is not in the model folder: the folder's hash would change with every run. Without a record: None, or
    with `required` (push) an InputError naming finetune, as a record that is not JSON always is."""
    record = root / FINETUNE_RUNTIME if root is not None else FINETUNE_RUNTIME  # the workspace's (a --temp run's own)
    if not required and not record.is_file():
        return None
    run_id = read_json(record, "finetune").get(MLFLOW_RUN_ID)
    if required and not isinstance(run_id, str):
        raise InputError(f"{record} names no {MLFLOW_RUN_ID}: `dvc repro finetune` restores the record finetune wrote")
    return run_id


class TrackingUnavailableError(UserError):
    """The configured MLflow tracking server does not answer."""


def without_userinfo(uri: str) -> str:
    """The URI without any user:password@ part."""
    parts = urlparse(uri)
    if parts.username or parts.password:  # the host as written: hostname would drop an IPv6 address's brackets
        return urlunparse(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return uri


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the project's local store by absolute path."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _prepare_local_store(uri: str) -> None:
    """Create the SQLite store and the experiment under a file lock, in WAL mode.

    Two queued experiments (`dvc queue start -j 2`) start at once: without the lock both would
    run MLflow's schema migrations on a new file. WAL lets readers and one writer work side by
    side; MLflow's own busy timeout (20 s a session) makes concurrent writers wait, not fail.
    """
    import sqlite3

    import mlflow
    from filelock import FileLock

    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / STORE_LOCK), timeout=120):
        with sqlite3.connect(path, timeout=60) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        connection.close()
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            mlflow.create_experiment(EXPERIMENT, artifact_location=(project_root() / DEFAULT_ARTIFACTS).as_uri())


def tls_settings() -> dict[str, object]:
    """requests' verify/cert from MLflow's own TLS variables, so a check reaches what MLflow's client reaches."""
    from mlflow.environment_variables import MLFLOW_TRACKING_INSECURE_TLS

    settings: dict[str, object] = {}
    if MLFLOW_TRACKING_INSECURE_TLS.get():  # as MLflow reads it: true, 1, ...
        settings["verify"] = False
    elif server_cert := os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        settings["verify"] = server_cert
    if client_cert := os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        settings["cert"] = client_cert
    return settings


def configure_tracking(timeout_s: float = 5.0) -> str:
    """Point MLflow at the configured store and check it answers, before any expensive work.

    Returns the tracking URI (redacted). Raises TrackingUnavailableError naming the server and
    what to do, so a down server costs seconds, not a finished training run.
    """
    import mlflow

    uri = tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in {"http", "https"}:
        try:
            urlparse(uri).port  # noqa: B018 (raises where a password's unencoded "/", "?" or "#" ended the host early)
        except ValueError:
            raise TrackingUnavailableError(
                f"MLFLOW_TRACKING_URI {redact_url(uri)} is not a URL MLflow can use: percent-encode a user name's or "
                "password's '/', '?', '#', '@' and ':' (%2F, %3F, %23, %40, %3A), or pass them in MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD") from None
    if without_userinfo(uri) != uri and scheme in {"http", "https"}:
        # MLflow quotes the tracking URI in its "View run ... at:" line and in every failed request's error:
        # hand it the credentials through its Basic-auth variables instead, and a URI without them. A database
        # store (postgresql://user:password@...) takes them from its URI only: it keeps them, and only this
        # project's messages redact it.
        parts = urlparse(uri)
        for name, value in (("USERNAME", parts.username), ("PASSWORD", parts.password)):
            if value is not None:
                os.environ[f"MLFLOW_TRACKING_{name}"] = unquote(value)
        os.environ["MLFLOW_TRACKING_URI"] = uri = without_userinfo(uri)
    mlflow.set_tracking_uri(uri)
    if scheme in {"http", "https"}:
        import requests

        try:
            # /health is served by `mlflow server`; any HTTP answer proves it is up. With MLflow's own TLS settings:
            # a server MLflow's client reaches (a private CA, a self-signed certificate) must not be refused here.
            requests.get(uri.rstrip("/") + "/health", timeout=timeout_s, **tls_settings())
        except requests.RequestException as exc:
            raise TrackingUnavailableError(
                f"MLflow tracking server {redact_url(uri)} (MLFLOW_TRACKING_URI) does not answer: "
                f"{type(exc).__name__}. Start it, fix the URI, or unset MLFLOW_TRACKING_URI to use "
                f"the local store {DEFAULT_TRACKING_URI}."
            ) from None
        except OSError as exc:  # requests' own check of a certificate path that is not there
            raise TrackingUnavailableError(f"MLflow's TLS settings for {redact_url(uri)}: {exc}; fix MLFLOW_TRACKING_SERVER_CERT_PATH "
                                           "or MLFLOW_TRACKING_CLIENT_CERT_PATH") from None
    try:
        if scheme == "sqlite" and not uri.startswith("sqlite:///:memory:"):
            _prepare_local_store(uri)
        elif mlflow.get_experiment_by_name(EXPERIMENT) is None:
            # Local store: keep artifacts inside the project, not in a cwd-dependent default.
            location = (project_root() / DEFAULT_ARTIFACTS).as_uri() if scheme in {"", "file"} else None
            try:
                mlflow.create_experiment(EXPERIMENT, artifact_location=location)
            except mlflow.exceptions.MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another run started at once (`dvc queue start -j 2`) made it
                    raise
        mlflow.set_experiment(EXPERIMENT)
    except mlflow.exceptions.MlflowException as exc:  # a store MLflow refuses (a plain folder: its file store is retired)
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__).replace(uri, redact_url(uri)).rstrip(".")
        raise TrackingUnavailableError(
            f"MLflow cannot use the store {redact_url(uri)} (MLFLOW_TRACKING_URI): {reason}. Point it at a server or a database "
            f"(sqlite:///path/mlflow.db), or unset it to use the local store {DEFAULT_TRACKING_URI}."
        ) from None
    return redact_url(uri)


def file_fingerprint(*paths: Path) -> str:
    """sha256 over the files (directories: their files in sorted order), to tag which data a run saw."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        for file in files:
            digest.update(str(file.as_posix()).encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# What a run's code and settings are (not DVC's outputs, which a run itself rewrites).
SOURCE_PATHS = ("*.py", "params.yaml", "dvc.yaml", "*.js", "*.toml")


def uncommitted_changes(limit: int = 8) -> str:
    """The source files (SOURCE_PATHS) that differ from git_commit() in the working tree: a release or run built before
    its code was committed (or a `dvc exp run -S`'s params.yaml) says so, since the commit alone does not rebuild it.
    "" when none (or no git)."""
    try:
        changed = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", *SOURCE_PATHS], capture_output=True, text=True,
                                 check=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return ""
    return ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")


def file_sha256(path: Path | str) -> str:
    """What `sha256sum` prints for the file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dvc_tags() -> dict[str, str]:
    """The DVC experiment a stage runs in, so MLflow runs match `dvc exp show` rows one for one.

    DVC sets DVC_EXP_NAME and DVC_EXP_BASELINE_REV for `dvc exp run` (workspace, --temp, --queue);
    a plain `dvc repro` sets neither, and its runs carry no experiment tag.
    """
    tags = {}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def run_tags(*data_paths: Path) -> dict[str, str]:
    """Tags every run carries: git commit, DVC experiment name and baseline commit, data fingerprint."""
    changed = uncommitted_changes()
    return {"git_commit": git_commit(), **({"git_uncommitted": changed} if changed else {}),
            "data_fingerprint": file_fingerprint(*data_paths), **dvc_tags()}


def metric_key(name: str) -> str:
    """A metric name MLflow accepts: `@` (as in `ndcg@10`) is not allowed there, so it becomes `_at_`."""
    return re.sub(r"[^0-9A-Za-z_\-. :/]", "_", name.replace("@", "_at_"))


@contextmanager
def tracked_run(run_id: str | None = None, run_name: str | None = None, tags: dict[str, str] | None = None) -> Iterator[str]:
    """Start (or continue, given `run_id`) an MLflow run and always end it.

    Ends FINISHED on success, KILLED on Ctrl-C/SIGTERM (KeyboardInterrupt), FAILED on any other
    exception, so no run is left RUNNING. A `run_id` the store does not know starts a new run.
    Yields the run id.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    run = None
    if run_id:
        try:
            run = mlflow.start_run(run_id=run_id)
        except MlflowException:
            run = None
    if run is None:
        run = mlflow.start_run(run_name=run_name)
    if tags:
        mlflow.set_tags(tags)
    try:
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


WEIGHTS_TAG = "weights_sha256"
SAME_WEIGHTS_TAG = "same_weights_as_run"


def tag_weights(run_id: str, weights: str) -> tuple[str, bool] | None:
    """Tag finetune's run with the sha256 of the weights it saved; when an earlier run of the experiment trained the
    same weights, also with that run: DVC evaluates a model once, so a retrain that gives the same weights (`dvc
    repro -f`, a knob the loss does not read) has no evaluation of its own, and the tag says where it is. The first
    such run that holds an evaluation (eval.* metrics), else the first one (trained, never evaluated: an experiment
    run to finetune only). Returns (that run's id, whether it holds an evaluation), or None."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, WEIGHTS_TAG, weights)
    earlier = [run for run in client.search_runs([client.get_run(run_id).info.experiment_id],
                                                 filter_string=f"tags.{WEIGHTS_TAG} = '{weights}'",
                                                 order_by=["attributes.start_time ASC"], max_results=100)
               if run.info.run_id != run_id]
    if not earlier:
        return None
    evaluated = [run for run in earlier if any(name.startswith("eval.") for name in run.data.metrics)]
    chosen = (evaluated or earlier)[0].info.run_id
    client.set_tag(run_id, SAME_WEIGHTS_TAG, chosen)
    return chosen, bool(evaluated)


def close_dead_process_runs(stage: str, keep: str | None = None) -> list[str]:
    """End as KILLED this host's RUNNING runs of `stage` (finetune, either mode; evaluate's own runs) started by a
    process that is gone (killed -9), but `keep`.

    No lock proves that nobody owns a run: an adapter run has no checkpoint folder, and a queued point with the same
    params may train in its own workspace's folder. A run killed with -9 is told from a live one (a queued experiment
    running alongside) by the pid it recorded."""
    import socket

    import mlflow

    from arxiv_embed.processes import process_alive

    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.stage = '{stage}' and tags.host = "
                              f"'{socket.gethostname()}' and attributes.status = 'RUNNING'")
    closed = [run.info.run_id for run in runs if run.info.run_id != keep
              and not ((pid := run.data.tags.get("pid", "")).isdigit() and int(pid) > 0 and process_alive(int(pid)))]
    for run_id in closed:
        client.set_terminated(run_id, status="KILLED")
    return closed
