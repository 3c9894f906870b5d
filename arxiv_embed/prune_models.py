"""Free the disk the MLflow models of old finetune runs take: each finetune logs its whole model (~106 MB with MiniLM).

Not a stage: run by hand (`python -m arxiv_embed.prune_models --keep 5`) after a sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from arxiv_embed.paths import project_root
from arxiv_embed.tracking import EXPERIMENT, configure_tracking, finetune_run_id


def _local_folder(artifact_location: str) -> Path | None:
    """A local (file://) artifact folder; None where the files are elsewhere (a server's store)."""
    parts = urlparse(artifact_location)
    return Path(unquote(parts.path)) if parts.scheme in {"", "file"} else None


def _folder_bytes(folder: Path | None) -> int | None:
    """Bytes under a local folder; None when it is not on this machine (a tracking server's own disk)."""
    if folder is None or not folder.exists():
        return None
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def registry_versions(client) -> list:
    """Every version of every registered model in the store, page by page."""
    versions, token = [], None
    while True:
        page = client.search_model_versions(page_token=token)
        versions += page
        if not (token := page.token):
            return versions


def prune_models(keep: int) -> list[tuple[str, int | None]]:
    """Delete the files of the project's MLflow models (each finetune logs its whole model: ~106 MB with MiniLM) but the
    newest `keep`, any a Model Registry version points at, and the one of the model in the workspace (push registers it),
    and mark those models deleted. Runs, their metrics, reports and plots stay; nothing else in the store is touched
    (`mlflow gc` would also erase every run waiting in the trash). Returns (model id, bytes freed: None when the files
    are not on this machine) of each model deleted."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    uri = configure_tracking()
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    models = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                         order_by=[{"field_name": "creation_time", "ascending": False}])
    # A version names its model by id, or only in its source (`models:/<id>`: the SQLite registry leaves model_id empty);
    # a version registered from a run's files (`runs:/...`) keeps that run's model.
    registered, registered_runs = set(), set()
    for version in registry_versions(client):
        if version.model_id or version.source.startswith("models:/"):
            registered.add(version.model_id or version.source.removeprefix("models:/").split("/")[0])
        else:
            registered_runs.add(version.run_id)
    in_use = registered_runs | ({trained} if (trained := finetune_run_id(project_root())) else set())
    doomed = [model for model in models[keep:] if model.model_id not in registered and model.source_run_id not in in_use]
    deleted = []
    for model in doomed:
        folder = _local_folder(model.artifact_location)
        size = _folder_bytes(folder)
        if folder is not None and size is None:
            print(f"prune_models: {model.artifact_location} is not on this machine (a server's own folder): remove it there",
                  file=sys.stderr)
        try:
            get_artifact_repository(model.artifact_location).delete_artifacts()
        except Exception as exc:  # noqa: BLE001 (a store that cannot delete files: the model is still marked deleted)
            print(f"prune_models: the files of {model.model_id} stay at {model.artifact_location} ({type(exc).__name__})",
                  file=sys.stderr)
            size = None
        if folder is not None and folder.parent.name == model.model_id:
            with contextlib.suppress(OSError):  # not empty (the files stayed), or already gone
                folder.parent.rmdir()  # mlruns/models/<id>/, left empty
        client.delete_logged_model(model.model_id)
        deleted.append((model.model_id, size))
    freed = [size for _, size in deleted if size is not None]
    print(f"prune_models: {len(models)} models in {uri} (experiment {EXPERIMENT}); kept the newest {min(keep, len(models))}, "
          f"the registered ones and the workspace model's; deleted {len(deleted)}"
          + (f", freeing {sum(freed) / 1e6:.1f} MB" if freed else ""))
    return deleted

if __name__ == "__main__":
    from arxiv_embed.errors import run

    parser = argparse.ArgumentParser(prog="python -m arxiv_embed.prune_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=int, default=5,
                        help="how many of the newest models to keep (5); registered ones and the workspace's are kept too")
    arguments = parser.parse_args()
    if arguments.keep < 0:
        parser.error("--keep must be 0 or more")
    run(lambda: prune_models(arguments.keep), "prune_models", takes_arguments=True)
