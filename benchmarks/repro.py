"""repro: `dvc repro` with nothing changed (target < 3 s), and after an evaluate-only param change
(only evaluate_base and evaluate may run), in a throw-away project copy under the tests' TINY_PARAMS."""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import Report, load_note
from tests.harness import deep_update, dvc, make_project, ran_stages
from tests.conftest import TINY_PARAMS

EVALUATE_ONLY_CHANGE = ("evaluate", "binary_rescore_multiplier", 4)  # a knob both evaluate stages read, nothing upstream does
# A few training steps do not beat the base model: open push's quality gate, which is not what is timed here.
PARAMS = deep_update(copy.deepcopy(TINY_PARAMS), {"push": {"gate": {"tolerance": 1.0}}})
QUICK: dict = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--noop-runs", type=int, default=3, help="repro: no-op `dvc repro` runs (the median is reported)")


def timed_repro(project: Path) -> tuple[float, list[str]]:
    start = time.perf_counter()
    result = dvc(project, "repro")
    return time.perf_counter() - start, ran_stages(result)


def run(args: argparse.Namespace) -> Report:
    report = Report("repro")
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as workdir:
        project = make_project(Path(workdir) / "project", PARAMS)
        full_s, full_ran = timed_repro(project)
        report.add("full `dvc repro` (s)", round(full_s, 1), note=f"{len(full_ran)} stages, tests' TINY_PARAMS on the first 1,000 records of the embedded sample")

        noop = [timed_repro(project) for _ in range(args.noop_runs)]
        noop_s = statistics.median(s for s, _ in noop)
        ran = sorted({stage for _, stages in noop for stage in stages})
        report.add("no-op `dvc repro` (s)", round(noop_s, 2), round(full_s, 1), higher_is_better=False,
                   note=f"target < 3 s; median of {len(noop)}; stages run: {ran or 'none'}")

        section, key, value = EVALUATE_ONLY_CHANGE
        params = yaml.safe_load((project / "params.yaml").read_text())
        params[section][key] = value
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        incremental_s, ran = timed_repro(project)
        # params_check reads every param, so any change reruns it (a second); its stamp does not change, so nothing after it reruns.
        expected = sorted(stage for stage in ran if stage != "params_check") == ["evaluate", "evaluate_base"]
        report.add(f"`dvc repro` after {section}.{key}={value} (s)", round(incremental_s, 1), round(full_s, 1), higher_is_better=False,
                   note=f"stages run: {', '.join(ran)} ({'as expected' if expected else 'EXPECTED params_check, evaluate_base, evaluate only'})")
    if note := load_note():
        report.notes.append(note)
    return report
