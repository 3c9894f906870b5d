"""Secrets stay in the environment: the Hub token (HF_TOKEN) and MLflow credentials in the
tracking URI (`user:password@`) appear in no output, cache, store or log of the whole DAG, on its
success path and its failure paths."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from arxiv_embed.errors import redact_url as redact
from tests.harness import deep_update
from tests.conftest import TINY_PARAMS, make_project, run, stage_env
from tests.test_finetune import free_port, mlflow_server  # noqa: F401 (fixture)
from tests.test_push import FAKE_TOKEN, REPO_ID, fake_hub  # noqa: F401 (fixture)

USER, PASSWORD = "alice", "pw-S3cret-doNotLeak"
SECRETS = [FAKE_TOKEN, PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]  # the last: a Basic auth header


def with_credentials(uri: str) -> str:
    return uri.replace("http://", f"http://{USER}:{PASSWORD}@")


def test_redact_drops_user_password_and_query_and_keeps_the_rest() -> None:
    assert redact(f"http://{USER}:{PASSWORD}@mlflow.example.com:5000/path?token=QSECRET") == "http://mlflow.example.com:5000/path?..."
    assert redact(f"https://{USER}@host/") == "https://host/"
    assert redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    # An IPv6 host keeps its brackets (without them the URL is invalid) and the host its case.
    assert redact(f"http://{USER}:{PASSWORD}@[::1]:5000/") == "http://[::1]:5000/"
    assert redact(f"http://{USER}:p@ss@MLflow.example.com/") == "http://MLflow.example.com/"
    for unencoded in "/?#":  # a URL parser reads these as the host's end: cut to the last @ all the same
        assert redact(f"http://{USER}:pa{unencoded}ss{PASSWORD}@127.0.0.1:5999/") == "http://127.0.0.1:5999/"


def leaks(texts: dict[str, bytes]) -> list[str]:
    return [f"{where}: {secret[:6]}..." for where, data in texts.items() for secret in SECRETS if secret.encode() in data]


def every_file(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.slow
def test_no_secret_in_any_output_cache_store_or_log(tmp_path: Path, kaggle_sample: Path, mlflow_server: str, fake_hub) -> None:  # noqa: F811
    params = deep_update(copy.deepcopy(TINY_PARAMS), {"push": {"hub": {"enabled": True, "repo_id": REPO_ID}}})
    project = make_project(tmp_path / "project", params)
    caches = {"HF_HOME": tmp_path / "hf-home", "DVC_SITE_CACHE_DIR": tmp_path / "dvc-site", "MPLCONFIGDIR": tmp_path / "mpl"}
    env = stage_env(project)
    env.pop("HF_HUB_OFFLINE")  # push talks to the fake Hub on 127.0.0.1
    env.update({name: str(path) for name, path in caches.items()},
               HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=fake_hub.endpoint, MLFLOW_TRACKING_URI=with_credentials(mlflow_server))
    dvc = str(Path(sys.executable).parent / "dvc")
    logs = {"dvc repro": run([dvc, "repro"], project, env=env)}
    assert any(auth == f"Bearer {FAKE_TOKEN}" for _, _, auth in fake_hub.requests)  # the token was used
    assert "uploaded to the Hub" in logs["dvc repro"].stdout

    # Failure paths: a down tracking server, an unreachable Hub, a refused gate, each with the secrets set.
    down = {**env, "MLFLOW_TRACKING_URI": with_credentials(f"http://127.0.0.1:{free_port()}")}
    logs["finetune, server down"] = run([sys.executable, "-m", "stages.finetune"], project, check=False, env=down)
    logs["evaluate, server down"] = run([sys.executable, "-m", "stages.evaluate", "--model", "finetuned"], project, check=False, env=down)
    logs["push, server down"] = run([sys.executable, "-m", "stages.push"], project, check=False, env=down)
    logs["push, Hub down"] = run([sys.executable, "-m", "stages.push"], project, check=False,
                                 env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    report = json.loads((project / "metrics/evaluate.json").read_text())
    report["delta_ci95"]["category_retrieval.ndcg@10"] = [-3.0, -2.0]  # below any tolerance: the gate refuses
    (project / "metrics/evaluate.json").write_text(json.dumps(report))
    logs["push, refused gate"] = run([sys.executable, "-m", "stages.push"], project, check=False, env=env)
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("tolerance: 1.0", "tolerance: -1.0"))
    logs["push, bad params"] = run([sys.executable, "-m", "stages.push"], project, check=False, env=env)
    for name, result in list(logs.items())[1:]:
        assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        # evaluate keeps its metrics when the server is down (it says so and exits 0); the others refuse.
        assert result.returncode != 0 or name.startswith("evaluate"), (name, result.stderr[-2000:])
    assert "does not answer" in logs["finetune, server down"].stderr and "127.0.0.1" in logs["finetune, server down"].stderr
    assert "cannot reach the Hugging Face Hub" in logs["push, Hub down"].stderr
    assert "quality gate failed: category_retrieval.ndcg@10" in logs["push, refused gate"].stderr

    # Everywhere: the project (outputs, metrics, models/finetuned, release, .dvc/cache, .dvc/tmp,
    # mlflow store and artifacts), the tracking server's store, the HF and DVC caches, and every log.
    server_store = sorted(tmp_path.parent.glob("mlflow-server*"))  # the mlflow_server fixture's folder
    assert server_store
    searched = every_file(project, *caches.values(), *server_store)
    assert any("/.dvc/cache/" in p for p in searched) and any("/.dvc/tmp/" in p for p in searched)
    assert any("/models/finetuned/" in p for p in searched) and any("/metrics/" in p for p in searched)
    searched.update({f"log of {name}": (r.stdout + r.stderr).encode() for name, r in logs.items()})
    assert not leaks(searched), leaks(searched)


def test_a_down_server_message_names_it_without_the_credentials(tmp_path: Path) -> None:
    """The cheap failure path alone (the slow test above covers every path)."""
    project = make_project(tmp_path / "project")
    env = {**stage_env(project), "MLFLOW_TRACKING_URI": with_credentials(f"http://127.0.0.1:{free_port()}"), "HF_TOKEN": FAKE_TOKEN}
    result = subprocess.run([sys.executable, "-c", "from arxiv_embed.errors import run; from arxiv_embed.tracking import "
                             "configure_tracking; run(configure_tracking, 'finetune')"], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "finetune: error: MLflow tracking server http://127.0.0.1:" in result.stderr
    assert not leaks({"stderr": result.stderr.encode()})
    # A password holding an unencoded "/": no URL parser finds the credentials in it, and no message shows them.
    env["MLFLOW_TRACKING_URI"] = f"http://{USER}:pa/ss{PASSWORD}@127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-c", "from arxiv_embed.errors import run; from arxiv_embed.tracking import "
                             "configure_tracking; run(configure_tracking, 'finetune')"], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "is not a URL MLflow can use: percent-encode" in result.stderr, result.stderr
    assert not leaks({"stderr": result.stderr.encode()}) and "pa/ss" not in result.stderr


def test_a_server_failing_after_its_health_check_is_reported_without_the_credentials(tmp_path: Path) -> None:
    """MLflow quotes the tracking URI in a failed request's error (a server that answered /health, then went
    down or timed out): that error, traceback and all, must not carry the password. The credentials still
    reach the server, as Basic auth."""
    code = ("import requests\n"
            "requests.get = lambda *args, **kwargs: None  # /health answered; every API call then fails\n"
            "from arxiv_embed.errors import run\n"
            "from arxiv_embed.tracking import configure_tracking\n"
            "run(configure_tracking, 'finetune')\n")

    def run_against(uri: str) -> subprocess.CompletedProcess:
        env = {**stage_env(tmp_path), "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "PYTHONPATH": str(Path(__file__).parents[1])}
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert not leaks({"stderr": result.stderr.encode()}), result.stderr[-2000:]
        assert result.returncode != 0, result.stderr[-2000:]
        return result

    down = with_credentials(f"http://127.0.0.1:{free_port()}")
    assert redact(down) in run_against(down).stderr  # the failed request, named without its credentials

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_error(500)

        def log_message(self, *args: object) -> None:
            pass

    seen: list[str | None] = []
    server = HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run_against(with_credentials(f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
    assert seen and seen[0] == f"Basic {SECRETS[2]}"


def test_a_run_on_a_server_prints_no_credentials(tmp_path: Path, mlflow_server: str) -> None:  # noqa: F811
    """MLflow prints a "View run ... at: <tracking URI>" line when a run ends: not with the password."""
    code = ("from arxiv_embed.tracking import configure_tracking, tracked_run\n"
            "configure_tracking()\n"
            "with tracked_run(run_name='r', tags={'stage': 'test'}): pass\n")
    env = {**stage_env(tmp_path), "MLFLOW_TRACKING_URI": with_credentials(mlflow_server), "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not leaks({"output": (result.stdout + result.stderr).encode()}), result.stdout


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed (a team's own MLflow server), and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert, key_file = folder / "server.pem", folder / "server.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, key_file


def test_the_health_check_trusts_what_mlflow_is_told_to_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_TRACKING_SERVER_CERT_PATH / MLFLOW_TRACKING_INSECURE_TLS reach a self-signed server through MLflow's own
    client: the check before any work must not refuse it."""
    import ssl

    import mlflow

    from arxiv_embed.tracking import TrackingUnavailableError, configure_tracking

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    cert, key = self_signed_certificate(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Only the health check is under test: the experiment calls would need a whole MLflow server.
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: object())
    monkeypatch.setattr(mlflow, "set_experiment", lambda name: None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri := f"https://127.0.0.1:{server.server_port}")
    for name in ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    try:
        with pytest.raises(TrackingUnavailableError, match="SSLError"):
            configure_tracking()
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
        assert configure_tracking() == uri
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "moved.pem"))
        with pytest.raises(TrackingUnavailableError, match="MLFLOW_TRACKING_SERVER_CERT_PATH"):  # one line, no traceback
            configure_tracking()
        monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
        monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "1")  # MLflow reads 1 as true too
        assert configure_tracking() == uri
    finally:
        server.shutdown()


def test_an_experiment_another_run_created_meanwhile_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs starting at once on a fresh store (`dvc queue start -j 2`): the one that loses the race to create the
    experiment uses it, with no traceback."""
    import mlflow

    from arxiv_embed.tracking import EXPERIMENT, configure_tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    configure_tracking()  # the other run, first
    real, looks = mlflow.get_experiment_by_name, []

    def looked_before_the_other_created_it(name: str):
        looks.append(name)
        return None if len(looks) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", looked_before_the_other_created_it)
    configure_tracking()
    assert len(looks) >= 1
    assert real(EXPERIMENT) is not None


def test_a_database_store_keeps_the_credentials_its_uri_carries(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's Basic-auth variables reach its REST client only: a database store connects with its URI's user and
    password, so stripping them would leave it unable to log in. Messages still show the URI redacted."""
    import mlflow

    from arxiv_embed.tracking import configure_tracking

    uri = "postgresql://alice:s3cret@127.0.0.1:1/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: object())  # no database here to ask
    monkeypatch.setattr(mlflow, "set_experiment", lambda name: None)
    previous = mlflow.get_tracking_uri()
    try:
        assert configure_tracking() == "postgresql://127.0.0.1:1/mlflow"
        assert mlflow.get_tracking_uri() == uri and "MLFLOW_TRACKING_PASSWORD" not in os.environ
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_store_mlflow_refuses_is_one_line_naming_it(tmp_path: Path) -> None:
    """A plain folder as MLFLOW_TRACKING_URI: MLflow 3.17 refuses its retired file store with an exception, which a
    stage reports as a user error (what to set instead), not a traceback."""
    from tests.conftest import ROOT

    env = {**stage_env(ROOT), "MLFLOW_TRACKING_URI": "./mlruns-x"}
    env.pop("MLFLOW_ALLOW_FILE_STORE", None)
    result = subprocess.run([sys.executable, "-c", "from arxiv_embed.errors import run; from arxiv_embed.tracking import "
                             "configure_tracking; run(configure_tracking, 'finetune')"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "finetune: error: MLflow cannot use the store ./mlruns-x (MLFLOW_TRACKING_URI)" in result.stderr
