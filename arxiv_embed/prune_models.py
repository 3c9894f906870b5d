"""Free the disk the MLflow models of old finetune runs take: each finetune logs its whole model (~90 MB with MiniLM).

Not a stage: run by hand (`python -m arxiv_embed.prune_models --keep 5`) after a sweep.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from arxiv_embed.errors import UserError
from arxiv_embed.paths import FINETUNED, project_root
from arxiv_embed.tracking import EXPERIMENT, RUN_INFO, configure_tracking


def _folder_bytes(artifact_location: str) -> int | None:
    """Bytes under a local (file://) artifact folder; None where the files are elsewhere (a server's store)."""
    parts = urlparse(artifact_location)
    if parts.scheme not in {"", "file"}:
        return None
    folder = Path(unquote(parts.path))
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def prune_models(keep: int) -> list[tuple[str, int | None]]:
    """Delete the project's MLflow models (each finetune logs its whole model: ~90 MB with MiniLM) but the newest `keep`,
    any a Model Registry version points at, and the one of the model in the workspace (push registers it). Runs, their
    metrics, reports and plots stay. A local store's files are removed now (`mlflow gc`); a server's are marked deleted
    for its `mlflow gc`. Returns (model id, bytes freed: None when not known) of each model deleted."""
    import mlflow

    uri = configure_tracking()
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    models = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                         order_by=[{"field_name": "creation_time", "ascending": False}])
    versions = [version for model in client.search_registered_models() for version in client.search_model_versions(f"name = '{model.name}'")]
    # A version names its model by id or only in its source (`models:/<id>`: the SQLite registry leaves model_id empty).
    registered = {version.model_id or version.source.removeprefix("models:/") for version in versions}
    run_info = project_root() / FINETUNED / RUN_INFO
    in_use = {version.run_id for version in versions} | ({json.loads(run_info.read_text())["run_id"]} if run_info.exists() else set())
    doomed = [model for model in models[keep:] if model.model_id not in registered and model.source_run_id not in in_use]
    deleted = []
    for model in doomed:
        size = _folder_bytes(model.artifact_location)
        client.delete_logged_model(model.model_id)
        deleted.append((model.model_id, size))
    store = mlflow.get_tracking_uri()
    if deleted and urlparse(store).scheme not in {"http", "https"}:  # a database store: its files are removed here
        collected = subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", store,
                                    "--logged-model-ids", ",".join(model_id for model_id, _ in deleted)],
                                   capture_output=True, text=True)
        if collected.returncode:
            reason = (collected.stderr.strip().splitlines() or ["no message"])[-1].replace(store, uri)
            raise UserError(f"`mlflow gc` on {uri} failed ({reason}); the {len(deleted)} models are marked deleted: "
                            f"`mlflow gc --backend-store-uri {uri}` removes their files")
    freed = [size for _, size in deleted if size is not None]
    print(f"prune_models: {len(models)} models in {uri} (experiment {EXPERIMENT}); kept the newest {min(keep, len(models))}, "
          f"the registered ones and the workspace model's; deleted {len(deleted)}"
          + (f", freeing {sum(freed) / 1e6:.1f} MB" if freed else "")
          + ("" if len(freed) == len(deleted) else " (the server frees their files with `mlflow gc`)"))
    return deleted


if __name__ == "__main__":
    from arxiv_embed.errors import run

    parser = argparse.ArgumentParser(prog="python -m arxiv_embed.prune_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=int, default=5, help="how many of the newest models to keep besides the registered ones (5)")
    arguments = parser.parse_args()
    if arguments.keep < 0:
        parser.error("--keep must be 0 or more")
    run(lambda: prune_models(arguments.keep), "prune_models")
