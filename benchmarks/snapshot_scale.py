"""snapshot_scale: the default DAG on snapshot-shaped files of growing size, stage by stage, with
each stage's wall time and peak memory, and a projection to the Kaggle snapshot (2.7M records).

The file is built from real records (default ../shared/data/arxiv-multidomain-sample.jsonl.gz,
18.5k papers of 20 archives), cycled: every copy gets fresh new-style ids and its title and
abstract made distinct (a copy marker), so clean keeps it; the schema is the snapshot's. Each size
runs in a throw-away project (`dvc repro -s <stage>` per stage), then a no-op `dvc repro` and a
finetune-only sweep point (`dvc exp run -S finetune.margin=0.2`) are timed on the largest.

The projection is arithmetic on measured rates, not a run: data stages scale with records,
embed_base with the texts the default samples hold (make_triplets.max_train_papers,
evaluate.max_test_papers) at the measured texts/s, finetune with the train sample, evaluate with the
test sample. On a shared CPU the rates are lower than on an idle one (the load is reported).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import yaml

from benchmarks.common import ROOT, Report, load_note, measure, shared_or
from tests.harness import dvc, make_project, stage_env

SNAPSHOT_RECORDS = 2_700_000
# 1,000 train papers: fewer make no label-grouped batch of finetune.batch_size (128) for supcon, and finetune fails; 200
# test papers over the shipped sample's 69 labels give none the 10 that evaluate.min_label_support asks.
QUICK = {"sizes": "3000,6000", "max_train_papers": 1000, "max_test_papers": 200, "test_triplets": 100, "min_label_support": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="50000,200000", help="snapshot_scale: records per run, comma-separated (up to 2700000)")
    parser.add_argument("--max-train-papers", type=int, default=None,
                        help="snapshot_scale: make_triplets.max_train_papers for the runs (default: params.yaml's)")
    parser.add_argument("--max-test-papers", type=int, default=None,
                        help="snapshot_scale: evaluate.max_test_papers for the runs (default: params.yaml's)")
    parser.add_argument("--test-triplets", type=int, default=None,
                        help="snapshot_scale: make_triplets.triplets_per_split.test for the runs (default: params.yaml's)")
    parser.add_argument("--min-label-support", type=int, default=None,
                        help="snapshot_scale: evaluate.min_label_support for the runs (default: params.yaml's)")
    parser.add_argument("--idle-texts-per-second", type=float, default=69.5,
                        help="snapshot_scale: the encoding rate of an idle 2-core CPU for the second projection "
                             "(default 69.5: `model.encode`'s fp32 abstracts/s at 128 tokens in benchmarks/README.md's encoding "
                             "row, the rate the committed projection used; the stages' own path measured 67.0 since)")


def write_snapshot_file(source: Path, out: Path, records: int) -> None:
    """`records` real records cycled, each copy with fresh ids (YYMM.NNNNN) and a marker making its text distinct."""
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        originals = [json.loads(line) for line in handle]
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=1) as sink:
        for n, record in enumerate(islice(cycle(originals), records)):
            copy = n // len(originals)
            month, seq = divmod(n, 99_999)
            record = {**record, "id": f"{(10 + month // 12) % 100:02d}{month % 12 + 1:02d}.{seq + 1:05d}"}
            if copy:
                record["title"] = f"{record['title']} (copy {copy})"
                record["abstract"] = f"{record['abstract'].rstrip()} Copy {copy} of this record.\n"
            sink.write(json.dumps(record) + "\n")


def run(args: argparse.Namespace) -> Report:
    report = Report("snapshot_scale")
    source = shared_or("arxiv-multidomain-sample.jsonl.gz", ROOT / "data" / "sample" / "arxiv-sample.jsonl.gz")
    sizes = [int(size) for size in str(args.sizes).split(",")]
    overrides: dict = {}
    if args.max_train_papers:
        overrides["make_triplets"] = {"max_train_papers": args.max_train_papers}
    if args.max_test_papers:
        overrides["evaluate"] = {"max_test_papers": args.max_test_papers}
    if args.min_label_support:
        overrides.setdefault("evaluate", {})["min_label_support"] = args.min_label_support
    if args.test_triplets is not None:
        overrides.setdefault("make_triplets", {})["triplets_per_split"] = {"test": args.test_triplets}
    report.notes.append(f"records cycled from {source.name}; overrides {overrides or 'none (default params)'}")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as workdir:
        for size in sizes:
            data = Path(workdir) / f"snapshot-{size}.jsonl.gz"
            write_snapshot_file(source, data, size)
            project = make_project(Path(workdir) / f"project-{size}",
                                   {**overrides, "download": {"source": "file", "path": str(data), "max_records": None}})
            runs[size], failed_stage = run_stages(project, report, size)
            if failed_stage:  # the stages after it never ran: nothing to rerun, and a projection would leave them out
                report.notes.append(f"{size:,} records: {failed_stage} failed, so no rerun timing and no projection")
                break
            if size == sizes[-1]:
                time_reruns(project, report)
        else:
            project_to_snapshot(runs, sizes, report, args.idle_texts_per_second)
    if note := load_note():
        report.notes.append(note)
    return report


def run_stages(project: Path, report: Report, size: int) -> tuple[dict, str | None]:
    """Each stage's seconds and peak MB (and the summaries they wrote), and the stage that failed, if one did."""
    stages = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    measured, failed_stage = {}, None
    for stage in stages:
        result = measure(["dvc", "repro", "-s", stage], project, env=stage_env(project), check=False)
        measured[stage] = {"seconds": result.seconds, "peak_mb": result.peak_rss_mb}
        failed = result.returncode != 0
        report.add(f"{size:,} records: {stage} s / peak MB", f"{result.seconds:.0f} / {result.peak_rss_mb:.0f}",
                   note=("FAILED: " + (result.stdout + result.stderr).strip().splitlines()[-1][:200]) if failed else "")
        print(f"snapshot_scale: {size:,} records, {stage}: {result.seconds:.0f} s, peak {result.peak_rss_mb:.0f} MB", flush=True)
        if failed:
            failed_stage = stage
            break
    total = sum(m["seconds"] for m in measured.values())
    if failed_stage is None:
        report.add(f"{size:,} records: whole DAG (s)", round(total))
    else:
        report.add(f"{size:,} records: DAG up to {failed_stage}, which failed (s)", round(total), note="incomplete")
    for name in ("split", "make_triplets", "embed_base", "finetune"):  # each stage's summary and its runtime record
        found = [json.loads(path.read_text()) for path in (project / "metrics" / f"{name}.json", project / "metrics/runtime" / f"{name}.json")
                 if path.exists()]
        if found:
            measured[f"{name}_metrics"] = {key: value for part in found for key, value in part.items()}
    return measured, failed_stage


def time_reruns(project: Path, report: Report) -> None:
    start = time.perf_counter()
    dvc(project, "repro")
    report.add("no-op `dvc repro` (s)", round(time.perf_counter() - start, 1), 5.0, higher_is_better=False, note="target < 5 s")
    start = time.perf_counter()
    result = dvc(project, "exp", "run", "-S", "finetune.margin=0.2")
    ran = [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]
    report.add("finetune-only sweep point (s)", round(time.perf_counter() - start, 1), 60.0, higher_is_better=False,
               note=f"`dvc exp run -S finetune.margin=0.2` ran {', '.join(ran)}; target <= 60 s")


def project_to_snapshot(runs: dict, sizes: list[int], report: Report, idle_rate: float) -> None:
    """Per-stage times at 2.7M records from the largest run's measured rates (a projection, not a run)."""
    size = sizes[-1]
    measured = runs[size]
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    max_train, max_test = defaults["make_triplets"]["max_train_papers"], defaults["evaluate"]["max_test_papers"]
    split = measured.get("split_metrics", {})
    scale = SNAPSHOT_RECORDS / size
    train_at_scale = min(max_train, round(split.get("train", 0) * scale)) if split else max_train
    test_at_scale = min(max_test, round(split.get("test", 0) * scale)) if split else max_test
    embed = measured.get("embed_base_metrics", {})
    train_here = measured.get("make_triplets_metrics", {}).get("train", {}).get("papers", 1)
    test_here = embed.get("test_sample_papers", 1)
    projected = {}
    small = runs[sizes[0]] if len(sizes) > 1 else None
    for stage in ("download", "clean", "split", "make_triplets"):
        if stage not in measured:
            continue
        if small and stage in small:  # the marginal rate between the two largest sizes: start-up costs stay fixed
            per_record = max(0.0, measured[stage]["seconds"] - small[stage]["seconds"]) / (size - sizes[0])
            projected[stage] = measured[stage]["seconds"] + per_record * (SNAPSHOT_RECORDS - size)
        else:
            projected[stage] = measured[stage]["seconds"] * scale
    texts = 2 * train_at_scale + 2 * test_at_scale + 3 * 1000  # titles and abstracts of both samples, test triplets
    if embed.get("texts_per_second"):
        projected["embed_base"] = texts / embed["texts_per_second"] + 30  # + loading the model and the data
    if "finetune" in measured:
        projected["finetune"] = measured["finetune"]["seconds"] * train_at_scale / train_here
    for stage in ("evaluate_base", "evaluate"):
        if stage in measured:
            projected[stage] = measured[stage]["seconds"] * max(1.0, test_at_scale / test_here)
    if "push" in measured:
        projected["push"] = measured["push"]["seconds"]
    for stage, seconds in projected.items():
        report.add(f"PROJECTED 2.7M records: {stage} (min)", round(seconds / 60, 1))
    report.add("PROJECTED 2.7M records: whole DAG at the rates measured here (min)", round(sum(projected.values()) / 60, 1), 60.0,
               higher_is_better=False, note=f"train sample {train_at_scale:,}, test sample {test_at_scale:,} papers, {texts:,} texts "
               f"for embed_base at the measured {embed.get('texts_per_second')} texts/s; a projection, not a run")
    idle = {**projected, "embed_base": texts / idle_rate + 30}
    report.add("PROJECTED 2.7M records: whole DAG, embed_base at the idle rate (min)", round(sum(idle.values()) / 60, 1), 60.0,
               higher_is_better=False, note=f"embed_base {idle['embed_base'] / 60:.1f} min at {idle_rate} texts/s; other stages as measured here")
    report.notes.append("GPU profile (make_triplets.max_train_papers=null, every train paper): see benchmarks/README.md; "
                        "its GPU throughputs are not measured in this session")
