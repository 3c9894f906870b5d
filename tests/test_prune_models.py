"""`python -m arxiv_embed.prune_models`: the disk a sweep's logged models take, freed without losing what is used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_prune_keeps_the_newest_the_registered_and_the_workspace_s_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    import mlflow
    from sklearn.linear_model import LogisticRegression

    from arxiv_embed.prune_models import prune_models
    from arxiv_embed.tracking import configure_tracking

    monkeypatch.chdir(tmp_path)
    # The project's own kind of store (sqlite, files under mlruns/); set here so that the test's teardown unsets it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure_tracking()
    runs, models = [], []
    for step in range(6):  # oldest first; the last one's run goes to the trash, where a user can still restore it
        with mlflow.start_run() as run:
            logged = mlflow.sklearn.log_model(LogisticRegression().fit([[0], [1]], [0, 1]), name="model", pip_requirements=[])
        runs.append(run.info.run_id)
        models.append(logged)
    client = mlflow.MlflowClient()
    client.create_registered_model("arxiv-embed")
    client.create_model_version("arxiv-embed", source=models[0].model_uri, model_id=models[0].model_id)  # by model alone
    trashed = runs.pop()
    models.pop()
    mlflow.delete_run(trashed)
    (tmp_path / "metrics/runtime").mkdir(parents=True)  # the workspace model's run: finetune's runtime record names it
    (tmp_path / "metrics/runtime/finetune.json").write_text(json.dumps({"mlflow_run_id": runs[1]}))
    folders = [Path(mlflow.get_logged_model(model.model_id).artifact_location.removeprefix("file://")) for model in models]
    assert all(folder.is_relative_to(tmp_path / "mlruns") and any(folder.iterdir()) for folder in folders)

    deleted = prune_models(keep=3)  # the trashed run's model is the newest of the three

    # Kept: the newest three (the trashed run's, 4, 3), the registered one (0) and the workspace's (1); model 2 is
    # deleted, its files gone.
    assert [model_id for model_id, _ in deleted] == [models[2].model_id] and deleted[0][1] > 0
    assert [folder.exists() for folder in folders] == [True, True, False, True, True] and not folders[2].parent.exists()
    assert "6 models" in capsys.readouterr().out
    assert {run.info.run_id for run in mlflow.search_runs(output_format="list")} == set(runs)  # runs and metrics stay
    client.restore_run(trashed)  # nothing in the trash was erased
    mlflow.MlflowClient().get_model_version("arxiv-embed", "1")  # the registry version still resolves
    assert prune_models(keep=3) == []  # nothing more to do
