"""push: gate the model, write models/release, register it in MLflow and (push.hub) upload it to the Hugging Face Hub.

The release is the model with its card and manifest; the registry version is in the MLflow Model Registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from arxiv_embed.files import atomic_path, read_json, write_json
from arxiv_embed.model_card import MODELS, CardFacts, gather_facts, numeric_leaves, render_card, shareable_params, shown_model
from arxiv_embed.schema.base import load
from arxiv_embed.schema.download import FETCH_PATIENCE, FETCHED_WITH, fetched_with
from arxiv_embed.schema.finetune import TRAINED_WITH, trained_with
from arxiv_embed.schema.push import Gate, Hub, PushParams
from arxiv_embed.evaluation.headline import SCORED_WEIGHTS
from arxiv_embed.models import load_model, weights_sha256
from arxiv_embed.paths import FINETUNE_RUNTIME, FINETUNED, RAW, RELEASE, TRAINING_SUMMARY, TRIPLETS_DIR, metrics_file, runtime_file
from arxiv_embed.tracking import MLFLOW_RUN_ID, RUN_INFO, configure_tracking, dvc_tags, finetune_run_id, tracking_uri
from arxiv_embed.errors import UserError, run

if TYPE_CHECKING:
    import mlflow

EVALUATE = metrics_file("evaluate")
TRIPLET_COUNTS = metrics_file("make_triplets")  # test triplets of each kind of negative
RELEASE_TAG = "release_sha256"  # on each registry version: which release it is (see release_hash)


class PushError(UserError):
    """The stage refuses to push; the message says why and what to change."""


def check_evaluated_model(evaluation: dict, weights: str | None) -> None:
    """The gate reads an evaluation of THIS model (its weights' sha256): `dvc repro` keeps them in step, but a push run
    alone (`dvc repro -s push`, `python -m stages.push`) after a new finetune would gate on the old model's numbers."""
    if weights is None:
        raise PushError(f"{FINETUNED} holds no model weights: run `dvc repro push` (it trains and evaluates first)")
    scored = evaluation.get(SCORED_WEIGHTS)
    if scored != weights:
        what = f"scores weights {scored[:12]}" if scored else "does not say which model it scores (an older version wrote it)"
        raise PushError(f"{EVALUATE} {what}, but {FINETUNED} holds weights {weights[:12]}: run `dvc repro push` (it "
                        "re-evaluates this model first); the fine-tuned model is not pushed")


def check_trained_params(params: PushParams) -> None:
    """The card and manifest list params.yaml's finetune knobs as the ones that trained the model: a push run alone
    after changing one (`python -m stages.push`, `dvc repro -s push`) would list knobs that did not train it."""
    recorded = read_json(FINETUNE_RUNTIME, "finetune").get(TRAINED_WITH)
    if recorded != trained_with(params.shared.seed, params.model, params.finetune):
        what = ("was trained with other values of shared.seed, model or finetune than params.yaml's" if recorded else
                f"has no record of the params that trained it ({FINETUNE_RUNTIME} was written by an older version)")
        raise PushError(f"{FINETUNED} {what}: run `dvc repro push` (it trains with these first, or DVC's run-cache brings "
                        "back the model they trained); the fine-tuned model is not pushed")


def check_data_params(params: PushParams) -> None:
    """The card and manifest name params.yaml's download settings and shared.label as what made the data: a push run
    alone after changing one would name data the model was not trained on."""
    download, split = metrics_file("download"), metrics_file("split")
    if (recorded := read_json(download, "download").get(FETCHED_WITH)) != fetched_with(params.download):
        what = (f"{RAW} was fetched with other download settings than params.yaml's" if recorded else
                f"{download} does not record the download settings (an older version wrote it)")
        raise PushError(f"{what}: run `dvc repro push` (it makes the data, trains and evaluates first); the fine-tuned "
                        "model is not pushed")
    if (label := read_json(split, "split").get("label")) != params.shared.label:
        raise PushError(f"data/split holds labels of shared.label {label!r} ({split}), params.yaml's is "
                        f"{params.shared.label!r}: run `dvc repro push` (it splits, trains and evaluates first); the "
                        "fine-tuned model is not pushed")


def check_gate(evaluation: dict, gate: Gate) -> dict[str, object]:
    """Pass only when (1) the lower end of the paired-bootstrap 95% interval of push.gate.metric's delta
    (fine-tuned - base) clears -push.gate.tolerance: a gain inside the noise is no gain; and (2) no
    headline delta (evaluation/headline.py) has its whole interval below minus its own tolerance
    (push.gate.headline_tolerances): a gain on one lens must not hide a loss on another."""
    if not all(isinstance(evaluation.get(model), dict) for model in MODELS):
        raise PushError(f"{EVALUATE} has no 'base' and 'finetuned' metrics: re-run `dvc repro evaluate`")
    flat = {model: numeric_leaves(evaluation[model]) for model in MODELS}
    intervals = evaluation.get("delta_ci95", {})
    scored = intervals.keys() & flat["finetuned"].keys() & flat["base"].keys()
    require_interval(gate.metric, scored, f"push.gate.metric={gate.metric!r} is not a metric with a delta interval")
    base, tuned = flat["base"][gate.metric], flat["finetuned"][gate.metric]
    low, high = intervals[gate.metric]
    failed = []  # every check that fails, named in one refusal
    if low < -gate.tolerance:
        failed.append(f"{gate.metric} fine-tuned {tuned:.4f} vs base {base:.4f}, delta {tuned - base:+.4f} with 95% interval "
                      f"[{low:+.4f}, {high:+.4f}]: its lower end is below minus the tolerance {gate.tolerance} "
                      "(push.gate.metric, push.gate.tolerance in params.yaml)")
    headline, below = check_headline(flat, intervals, gate.headline_tolerances, scored)
    if below:
        failed.append(f"{'; '.join(below)} (push.gate.headline_tolerances in params.yaml)")
    if failed:
        raise PushError(f"quality gate failed: {'; '.join(failed)}; the fine-tuned model is not pushed")
    return {"metric": gate.metric, "base": base, "finetuned": tuned, "delta_ci95": [low, high], "tolerance": gate.tolerance,
            "headline": headline}


def require_interval(key: str, scored: set[str], refusal: str) -> None:
    """Refuse a gated metric evaluate gave no delta interval (`scored`: those it gave), saying what to do."""
    if key in scored:
        return
    if key in ("triplet.accuracy_hard", "triplet.accuracy_random"):  # reported only when some test triplet has that kind
        advice = (f"this run's test triplets hold no {key.rsplit('_', 1)[1]} negative ({TRIPLET_COUNTS} counts them; "
                  "make_triplets.hard_negative_fraction and shared.label decide which exist): gate on triplet.accuracy, or")
    else:
        advice = "re-run `dvc repro evaluate`, or"
    raise PushError(f"{refusal} in {EVALUATE}: {advice} use one of: {', '.join(sorted(scored))}")


def check_headline(flat: dict[str, dict[str, float]], intervals: dict, tolerances: dict[str, float],
                   scored: set[str]) -> tuple[dict[str, dict], list[str]]:
    """(headline metric -> {base, finetuned, delta, delta_ci95, tolerance}, a line for each metric whose delta's
    whole 95% interval lies below -its tolerance)."""
    rows, failed = {}, []
    for key, tolerance in tolerances.items():
        require_interval(key, scored, f"push.gate.headline_tolerances names {key!r}, which has no delta interval")
        base, tuned = flat["base"][key], flat["finetuned"][key]
        low, high = intervals[key]
        rows[key] = {"base": base, "finetuned": tuned, "delta": tuned - base, "delta_ci95": [low, high], "tolerance": tolerance}
        if high < -tolerance:
            floor = f"-{tolerance}" if tolerance else "0"
            failed.append(f"{key} delta {tuned - base:+.4f} with 95% interval [{low:+.4f}, {high:+.4f}] lies wholly below {floor}")
    return rows, failed


def hub_token(hub: Hub) -> str | None:
    if not hub.enabled:
        return None
    # Line breaks go, as huggingface_hub drops them from a token it reads itself (a pasted token often has one): sent as
    # is, a header with one fails, and its error quotes the token.
    token = os.environ.get("HF_TOKEN", "").replace("\r", "").replace("\n", "").strip()
    if not token:
        raise PushError("push.hub.enabled is true but HF_TOKEN is not set: set HF_TOKEN in the environment "
                        "(a write token) or set push.hub.enabled: false")
    if not (token.isascii() and token.isprintable()):  # a header cannot carry it: a traceback after the release
        raise PushError("HF_TOKEN holds characters no Hub token has (non-ASCII, or control characters): copy the token "
                        "again from https://huggingface.co/settings/tokens")
    # Checked before the release and the registry version are written, not at the upload after them.
    # huggingface_hub's own rule (constants.HF_HUB_OFFLINE): HF_HUB_OFFLINE when set, else TRANSFORMERS_OFFLINE, truthy.
    offline = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    if os.environ.get(offline, "").upper() in {"1", "ON", "YES", "TRUE"}:
        raise PushError(f"push.hub.enabled is true but {offline} is set: unset it to push to the Hub, or set push.hub.enabled: false")
    return token


def sha256_files(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def release_hash(release: Path) -> str:
    """One sha256 over what the release is: the model's files (not the training summary, which held wall times before
    they moved to metrics/runtime/, so that a release registered then keeps its files' part) and the manifest's
    evaluation and training data. Not its params: every param that shapes the model shows in its files or its
    evaluation, and one that does not (finetune.margin under a loss that reads none, logging_steps, push.*) makes no
    new model. Nor its provenance: the git commit and DVC experiment name change with the workspace. So a push after
    `dvc exp apply`, one that turns the Hub upload on, or one after a retrain that gave the same weights finds its
    registry version; a new evaluation of the same model (evaluate.* changed) is a new version, whose tags carry it."""
    manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
    described = {key: manifest.get(key) for key in ("model_name", "base_model", "training_data", "evaluation")}
    # The manifest's own digests of the files: the model's ~90 MB are not read again.
    files = {name: digest for name, digest in manifest["files"].items() if name not in ("README.md", TRAINING_SUMMARY)}
    return hashlib.sha256(json.dumps({"files": files, **described}, sort_keys=True, default=str).encode()).hexdigest()


def register(name: str, run_id: str, release: Path, facts: CardFacts, uri: str) -> tuple[str, str, bool]:
    """The Model Registry version of this release, with the evaluate metrics as tags: (version, its run id, True)
    when created now, (version, run id, False) when one is already registered (a rerun after a kill between the
    registry call and DVC's lock file, or a retrain that gave the same weights)."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    client = mlflow.MlflowClient()  # tracking configured by main (uri: its redacted URI, for messages)
    digest = release_hash(release)
    if client.search_registered_models(filter_string=f"name = '{name}'") and (existing := first_version(client, name, digest)):
        return existing.version, existing.run_id, False
    run = finetune_run(client, run_id, uri)
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], output_format="list")
    logged = [model for model in logged if model.status == LoggedModelStatus.READY]  # a failed log_model leaves FAILED/PENDING
    if not logged:
        # finetune logged no MLflow model here (its log_model failed, or it trained against another store): log the
        # release into the run, so the version still points at files that load.
        import sentence_transformers

        with mlflow.start_run(run_id=run.info.run_id):
            info = mlflow.sentence_transformers.log_model(
                load_model(release, device="cpu"), name="release",
                pip_requirements=[f"sentence-transformers=={sentence_transformers.__version__}"])
        logged = [client.get_logged_model(info.model_id)]
    run_id = run.info.run_id
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        try:
            client.create_registered_model(name, description="arXiv abstract embeddings fine-tuned by arxiv-embed")
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another push made it meanwhile (`dvc queue start -j 2`)
                raise
    tags = {f"{model}.{key}".replace("@", "_at_"): f"{value:.6f}"
            for model in (*MODELS, "delta") for key, value in facts.evaluation[model].items()}
    for key, row in facts.gate.get("headline", {}).items():  # every headline delta's interval, as the gate read it
        tags[f"delta_ci95.{key}".replace("@", "_at_")] = f"[{row['delta_ci95'][0]:.6f}, {row['delta_ci95'][1]:.6f}]"
    tags.update(gate_metric=facts.gate["metric"], git_commit=facts.provenance["git commit"], **{RELEASE_TAG: digest}, **dvc_tags())
    version = client.create_model_version(
        name, source=logged[0].model_uri, run_id=run_id, model_id=logged[0].model_id, tags=tags,
        description=f"base {facts.base_model}; {facts.gate['metric']}: base {facts.gate['base']:.4f}, "
                    f"fine-tuned {facts.gate['finetuned']:.4f}; headline deltas (95% interval): "
                    + ", ".join(f"{key} {row['delta']:+.4f} [{row['delta_ci95'][0]:+.4f}, {row['delta_ci95'][1]:+.4f}]"
                                for key, row in facts.gate.get("headline", {}).items()))
    # Two pushes of one release at once (queued points that give the same model and evaluation) both found none
    # above: the first version of this release stays, and a later one removes itself.
    first = first_version(client, name, digest)
    if first is not None and int(first.version) < int(version.version):
        client.delete_model_version(name, version.version)
        return first.version, first.run_id, False
    return version.version, run_id, True


def first_version(client: mlflow.MlflowClient, name: str, digest: str) -> mlflow.entities.model_registry.ModelVersion | None:
    """The lowest registry version of the release with this digest, if any."""
    versions = client.search_model_versions(f"name = '{name}' and tags.{RELEASE_TAG} = '{digest}'")
    return min(versions, key=lambda version: int(version.version), default=None)


def registered(name: str, run_id: str, release: Path, facts: CardFacts, uri: str) -> tuple[str, str, bool]:
    """register, with a store that fails after configure_tracking's check (gone down, read-only, refusing) said in one
    line within seconds, not a traceback after MLflow's ~4 minutes of retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES set
    by the user is kept)."""
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # ~15 s of backoff: a busy server's blip, not an outage
    try:
        return register(name, run_id, release, facts, uri)
    except MlflowException as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise PushError(f"the MLflow registry at {uri} failed: {reason.replace(tracking_uri(), uri)}; the last release is "
                        "kept: fix the store (or MLFLOW_TRACKING_URI) and run `dvc repro push` again") from None


def finetune_run(client: mlflow.MlflowClient, run_id: str, uri: str) -> mlflow.entities.Run:
    """The MLflow run that trained the model, or, when this store does not have it (DVC restored the model from its
    cache, trained in a clone that logged to another store) or it was deleted, a run here that stands for it: the
    registry version needs a live run of this store, and retraining only for that would spend the training again. One
    stand-in a model: a push that failed after making it finds it again."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from arxiv_embed.tracking import EXPERIMENT, run_tags

    try:
        trained = client.get_run(run_id)
        if trained.info.lifecycle_stage != "deleted":
            return trained
        why = f"was deleted in {uri} (a deleted run takes no new model)"
    except MlflowException as exc:
        reason = next((line for line in str(exc).splitlines() if line.strip()), exc.error_code)
        if exc.error_code == "INVALID_PARAMETER_VALUE":  # not a run id at all: the file was edited, not the store
            raise PushError(f"{FINETUNE_RUNTIME} names run {run_id!r}, which MLflow refuses ({reason}): "
                            "`dvc repro finetune` restores the record finetune wrote (from DVC's run-cache, or by training again)") from None
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a store that did not answer is not a store without the run
            raise PushError(f"MLflow {uri} could not read run {run_id} ({reason}); try again") from None
        why = f"is not in {uri}: DVC brought the model from its cache, trained where another store was used"
    experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    found = client.search_runs([experiment_id], f"tags.trained_in_run = '{run_id}' and tags.stage = 'push'", max_results=1)
    run = found[0] if found else client.create_run(experiment_id, run_name="push (model from DVC's cache)",
                                                   tags={**run_tags(TRIPLETS_DIR), "stage": "push", "trained_in_run": run_id})
    if not found:
        client.set_terminated(run.info.run_id, status="FINISHED")
    print(f"push: MLflow run {run_id}, which trained {FINETUNED} (its {FINETUNE_RUNTIME}), {why}; it is registered through "
          f"{'new ' if not found else ''}run {run.info.run_id} (tag trained_in_run={run_id})")
    return run


def transport_errors() -> tuple[type[Exception], ...]:
    """Network failures of the HTTP library huggingface_hub uses: httpx2 (2.x) or httpx (1.x)."""
    import importlib

    found = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found) or (OSError,)


def push_to_hub(hub: Hub, release: Path, token: str) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
    try:
        api.create_repo(hub.repo_id, private=hub.private, exist_ok=True)
        private = settle_visibility(api, hub)
        # delete_patterns: the repo holds the release's files alone, not an older model's (another mode's modules).
        commit = api.upload_folder(repo_id=hub.repo_id, folder_path=release, commit_message="arxiv-embed release",
                                   delete_patterns="*")
    except HFValidationError as exc:  # the schema checks repo_id's form; the Hub's own rules may be stricter
        raise PushError(f"push.hub.repo_id={hub.repo_id!r}: {str(exc).splitlines()[0]}") from None
    except OfflineModeIsEnabled:
        raise PushError("push.hub.enabled is true but HF_HUB_OFFLINE=1 is set: unset it to push to the Hub") from None
    except transport_errors() as exc:
        reason = str(exc).replace(token, "***")  # a transport's error may quote the header it could not send
        raise PushError(without_endpoint_credentials(
            f"cannot reach the Hugging Face Hub at {api.endpoint} ({type(exc).__name__}: {reason}): "
            "check the network or HF_ENDPOINT, or set push.hub.enabled: false", api.endpoint)) from None
    except HfHubHTTPError as exc:
        raise PushError(without_endpoint_credentials(hub_refusal(exc, hub.repo_id, token), api.endpoint)) from None
    print(f"push: uploaded to the Hub as {hub.repo_id} ({'private' if private else 'public'}): "
          f"{without_endpoint_credentials(commit.commit_url, api.endpoint)}")


def without_endpoint_credentials(text: str, endpoint: str) -> str:
    """A message without HF_ENDPOINT's user:password@ (a mirror or proxy's), wherever the endpoint's URLs quote it: as
    given, and as the HTTP client re-quotes it (`=`, `;`, spaces and the like percent-encoded) before the host."""
    userinfo, _, address = endpoint.partition("://")[2].rpartition("@")
    if not userinfo:
        return text
    text = text.replace(f"{userinfo}@", "")
    # The host as the client writes it back: any case, its port dropped when it is the scheme's default.
    host = address[:address.find("]") + 1] if address.startswith("[") else re.split(r"[/:?#]", address, maxsplit=1)[0]
    return re.sub(r"://[^/\s]*@(?=" + re.escape(host) + r"(?::\d+)?(?![\w.-]))", "://", text, flags=re.IGNORECASE)


def settle_visibility(api, hub: Hub) -> bool:
    """Whether the repo is private once the files may go up. create_repo leaves a repo that exists as it is:
    push.hub.private: true makes a public one private before any file is sent; false never publishes a private one
    (making a repo public is a choice left to its owner)."""
    private = bool(api.repo_info(hub.repo_id).private)
    if hub.private and not private:
        api.update_repo_settings(hub.repo_id, private=True)
        print(f"push: made the existing Hub repo {hub.repo_id} private (push.hub.private: true)")
        return True
    if private and not hub.private:
        print(f"push: the Hub repo {hub.repo_id} is private and stays so (push.hub.private: false does not publish "
              "it: change its visibility on the Hub)")
    return private


def hub_refusal(exc, repo_id: str, token: str) -> str:
    """The Hub's own reason (its message, not only the status line), with advice for that status."""
    status = exc.response.status_code if getattr(exc, "response", None) is not None else None
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()).replace(token, "***")
    if status in (401, 403):
        advice = "check that HF_TOKEN has write access to it and push.hub.repo_id is right"
    elif status == 429 or (status or 0) >= 500:
        advice = "the Hub is busy or failing: run `dvc repro push` again later (the release and registry are kept)"
    else:
        advice = "fix what the Hub names, then run `dvc repro push` again (the release and registry are kept)"
    return f"the Hub refused the upload to {repo_id} ({reason}): {advice}"


def main() -> None:
    params = load(PushParams)
    cfg = params.push
    evaluation = read_json(EVALUATE, "evaluate")
    run_id = finetune_run_id(required=True)  # the run that trained the model (DVC restores its record with the model)
    check_trained_params(params)
    check_data_params(params)
    check_evaluated_model(evaluation, weights_sha256(FINETUNED))
    gate = check_gate(evaluation, cfg.gate)
    token = hub_token(cfg.hub)
    uri = configure_tracking()  # a tracking server that does not answer is found before the release is replaced, not after
    facts = gather_facts(params, evaluation, gate)

    release = RELEASE
    with atomic_path(release) as tmp:
        # sentence-transformers' own README is replaced by the card generated from the DAG's outputs.
        # RUN_INFO: a model folder from an older DVC cache entry still holds its run id; the release is the model alone.
        shutil.copytree(FINETUNED, tmp, ignore=shutil.ignore_patterns(RUN_INFO, "README.md"))
        (tmp / "README.md").write_text(render_card(facts), encoding="utf-8")
        write_json(tmp / "manifest.json", {
            "model_name": cfg.registry_model_name,
            "base_model": shown_model(params.model.base),
            "files": sha256_files(tmp),
            "training_data": {"sha256": facts.training_files},  # each file trained on: `sha256sum` checks them
            "git_commit": facts.provenance["git commit"],
            "uncommitted_changes": facts.provenance["uncommitted changes"],
            "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
            "gate": gate,
            "evaluation": evaluation,
            # The knobs this stage tracks (dvc.yaml): how patiently download fetched is not what the model is.
            "params": shareable_params({**params.model_dump(exclude=FETCH_PATIENCE), "finetune": params.finetune.read_by_mode()}),
        })
        # Registered before the release is swapped in: a registry that fails leaves the last release in place, and a
        # kill between the two finds the version at the rerun (release_hash).
        version, version_run, created = registered(cfg.registry_model_name, run_id, tmp, facts, uri)
    # Which registry version and run the release is: here, not in the release, whose files stay those of the model.
    write_json(runtime_file("push"), {"registered_version": int(version), MLFLOW_RUN_ID: version_run})
    print(f"push: wrote {release} (gate {gate['metric']}: base {gate['base']:.4f} -> fine-tuned {gate['finetuned']:.4f})")
    how = "registered" if created else "already registered (same model files and evaluation):"
    print(f"push: {how} {cfg.registry_model_name} version {version} (MLflow run {version_run})")
    if token is None:
        print("push: Hugging Face Hub upload skipped (push.hub.enabled is false)")
    else:
        push_to_hub(cfg.hub, release, token)


if __name__ == "__main__":
    run(main, "push")
