"""train: training samples/s of finetune's setup (params.yaml's defaults) vs a bare
SentenceTransformerTrainer loop on the same data, model, loss and batch size.

"This project" is the stage's wiring from arxiv_embed/training.py: the NO_DUPLICATES sampler,
multi-dataset batches, loss and learning rate logged to MLflow every step. The baseline is the
trainer with default arguments (plain batch sampler, no logging callback). Evaluation and
checkpointing are timed once and amortised over finetune.full.eval_steps, as the stage does them.

    python -m benchmarks.train_throughput            # --steps 8 on the default params
    python -m benchmarks.train_throughput --quick    # 3 steps, max_seq_length 64, batch 16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Report, load_note, save, with_quick_sizes

QUICK = {"steps": 3, "max_seq_length": 64, "batch_size": 16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=8, help="train: optimizer steps timed per setup")
    parser.add_argument("--max-seq-length", type=int, default=None, help="train: override model.max_seq_length")
    parser.add_argument("--batch-size", type=int, default=None, help="train: override finetune.batch_size")
    parser.add_argument("--data", type=Path, default=ROOT, help="train: project folder holding data/triplets (default: this project)")


def _tiny_data(root: Path) -> None:
    """No make_triplets output here: build the same tiny files the tests use, from the real sample."""
    from tests.conftest import KAGGLE_SAMPLE
    from tests.test_training import write_tiny_data

    write_tiny_data(root, KAGGLE_SAMPLE, train_rows=120, eval_rows=40)


def _train(trainer) -> float:  # noqa: ANN001
    result = trainer.train()
    return result.metrics["train_runtime"]


def run(args: argparse.Namespace) -> Report:
    import mlflow
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from arxiv_embed.training import losses, recipe, trainer
    from arxiv_embed.training import data as training_data
    from arxiv_embed.models import load_model
    from arxiv_embed.params import load_params, parse_params

    raw = load_params(ROOT / "params.yaml").model_dump()
    raw["model"]["max_seq_length"] = args.max_seq_length or raw["model"]["max_seq_length"]
    raw["finetune"]["batch_size"] = args.batch_size or raw["finetune"]["batch_size"]
    # The trainer's throughput on pairs (mode=full, MNRL), whatever finetune's default mode is.
    raw["finetune"].update(mode="full", loss="mnrl", train_data=["same_label"], retain_title_abstract=0.0,
                          hard_negatives={"weight": 0.0, "candidates": 1})
    params = parse_params(raw)
    ft = params.finetune
    report = Report("train")
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data
        if not all(p.exists() for p in (Path(data_root) / f for f in sum(training_data.data_files(ft), []))):
            data_root = Path(tmp) / "data-root"
            _tiny_data(data_root)
            report.notes.append("no data/triplets in the project: used tiny files built from the 2007 sample")
        cwd = os.getcwd()
        os.chdir(data_root)
        try:
            dataset, _ = recipe.trainer_inputs(recipe.objectives(None, ft), ft)
            evaluator = trainer.build_evaluator(ft, ft.batch_size)
        finally:
            os.chdir(cwd)
        samples = args.steps * ft.batch_size

        # Baseline: the bare trainer, same model/loss/batch size/data, nothing else.
        def bare_trainer(steps: int) -> SentenceTransformerTrainer:
            model = load_model(params.model.base, params.model.max_seq_length, device="cpu")
            bare_args = SentenceTransformerTrainingArguments(
                output_dir=f"{tmp}/bare", max_steps=steps, per_device_train_batch_size=ft.batch_size,
                report_to="none", save_strategy="no", eval_strategy="no", seed=params.shared.seed, disable_tqdm=True,
            )
            return SentenceTransformerTrainer(model=model, args=bare_args, train_dataset=dataset, loss=losses.build_loss(model, ft))

        # Untimed warm-up: torch's first steps build kernels and allocate; whichever setup ran first paid for it.
        _train(bare_trainer(2))
        bare_s = _train(bare_trainer(args.steps))

        # This project: the stage's arguments and callback, logging into an MLflow run.
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        model = load_model(params.model.base, params.model.max_seq_length, device="cpu")
        stage_args = trainer.training_arguments(
            params, Path(tmp) / "stage", "fp32", "cpu", max_steps=args.steps, eval_strategy="no", save_strategy="no",
            load_best_model_at_end=False, disable_tqdm=True,
        )
        stage = SentenceTransformerTrainer(
            model=model, args=stage_args, train_dataset=dataset, loss=losses.build_loss(model, ft),
            evaluator=evaluator, callbacks=[trainer.mlflow_callback()],
        )
        with mlflow.start_run():
            stage_s = _train(stage)
            mlflow.flush_async_logging()
            started = time.perf_counter()
            stage.evaluate()
            stage._save_checkpoint(stage.model, trial=None)  # what each save_steps costs (model + optimizer state)
            eval_save_s = time.perf_counter() - started

    ours, base = samples / stage_s, samples / bare_s
    per_step = stage_s / args.steps + eval_save_s / ft.full.eval_steps
    report.add("training loop samples/s", round(ours, 2), round(base, 2), note=f"{args.steps} steps, batch {ft.batch_size}, seq {params.model.max_seq_length}")
    report.notes.append("length-grouped batching: sentence-transformers' batch samplers offer none (no group_by_length), so it is not measured")
    report.add("evaluation + checkpoint, s (once per eval_steps)", round(eval_save_s, 1), None, higher_is_better=False)
    report.add(f"samples/s incl. eval+checkpoint every {ft.full.eval_steps} steps", round(ft.batch_size / per_step, 2), round(base, 2))
    if note := load_note():
        report.notes.append(note)
    return report


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 steps, shorter sequences, smaller batches")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:  # its sizes stand in for the defaults only, as in `python -m benchmarks`: a given option is kept
        args = with_quick_sizes(parser, argv, args, QUICK)
    report = run(args)
    save(report)
    return report.to_dict()


if __name__ == "__main__":
    main()
