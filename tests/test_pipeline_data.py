"""The data half of the real DAG: `dvc repro make_triplets` on the first 1,000 records of the default sample."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import TINY_PARAMS, dvc, make_project, ran_stages

DATA_STAGES = ["params_check", "download", "clean", "split", "make_triplets"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> Iterator[Path]:
    params = {key: TINY_PARAMS[key] for key in ("download", "split", "make_triplets")}
    project = make_project(tmp_path_factory.mktemp("data") / "project", params)
    result = dvc(project, "repro", "make_triplets")
    assert ran_stages(result) == DATA_STAGES
    yield project


def metrics(project: Path, stage: str) -> dict:
    return json.loads((project / f"metrics/{stage}.json").read_text())


def splits(project: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(project / f"data/split/{name}.parquet") for name in ("train", "eval", "test")}


def test_counts_add_up_with_the_rejects(project: Path) -> None:
    clean = metrics(project, "clean")
    rejects = (project / "data/clean/rejects.jsonl").read_text().splitlines()
    assert clean["records_in"] == 1000
    assert clean["records_in"] == clean["records_out"] + clean["rejected_total"]
    assert clean["rejected_total"] == len(rejects) == sum(clean["rejected"].values())
    assert pl.read_parquet(project / "data/clean/papers.parquet").height == clean["records_out"]
    split = metrics(project, "split")
    dropped = split["rare_labels"]["papers"] if split["rare_labels"]["handling"] == "drop" else 0
    sizes = {name: frame.height for name, frame in splits(project).items()}
    assert sum(sizes.values()) == split["papers_out"] == clean["records_out"] - dropped
    assert sizes == {name: split[name] for name in sizes}


def test_no_paper_in_two_splits(project: Path) -> None:
    ids = [set(frame["id"]) for frame in splits(project).values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert all(frame["label"].null_count() == 0 for frame in splits(project).values())


def test_training_data_comes_from_its_own_split(project: Path) -> None:
    counts = TINY_PARAMS["make_triplets"]
    made = metrics(project, "make_triplets")
    for name, papers in splits(project).items():
        label = dict(papers.select("id", "label").iter_rows())
        triplets = pl.read_parquet(project / f"data/triplets/{name}_triplets.parquet")
        assert triplets.height == counts["triplets_per_split"][name] == made[name]["triplets"]
        for column, label_column in (("anchor_id", "label"), ("positive_id", "label"), ("negative_id", "negative_label")):
            assert [label[i] for i in triplets[column]] == triplets[label_column].to_list(), f"{name} {column}"
        assert (triplets["label"] != triplets["negative_label"]).all()
        assert set(triplets["negative_type"]) == {"hard", "random"}
        pairs = pl.read_parquet(project / f"data/triplets/{name}_same_label.parquet")
        assert [label[i] for i in pairs["positive_id"]] == pairs["label"].to_list()
        title_abstract = pl.read_parquet(project / f"data/triplets/{name}_title_abstract.parquet")
        assert sorted(title_abstract["id"]) == sorted(label)


def test_second_repro_runs_nothing_and_a_param_change_reruns_only_make_triplets(project: Path) -> None:
    assert ran_stages(dvc(project, "repro", "make_triplets")) == []
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["make_triplets"]["hard_negative_fraction"] = 0.25
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(dvc(project, "repro", "make_triplets")) == ["params_check", "make_triplets"]  # the check: seconds, same stamp
    assert metrics(project, "make_triplets")["hard_negative_fraction"] == 0.25
