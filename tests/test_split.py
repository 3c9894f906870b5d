"""split on small clean tables the tests write: determinism, stratification, rare labels, time."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from arxiv_embed.data.order import stable_order
from arxiv_embed.errors import UserError
from stages import split
from tests.conftest import ROOT, deep_update
from arxiv_embed.data.columns import PAPER_SCHEMA as CONTRACT
from arxiv_embed.data.columns import SPLIT_SCHEMA

# label -> number of papers; "cs.XX" and "math.YY" are below min_papers_per_label=10.
SIZES = {"cs.CV": 40, "cs.CL": 25, "hep-th": 12, "math.AG": 10, "cs.XX": 4, "math.YY": 2}


def papers_table(sizes: dict[str, int] = SIZES) -> pl.DataFrame:
    rows = []
    for category, n in sizes.items():
        for i in range(n):
            day = dt.date(2007, 1, 1) + dt.timedelta(days=len(rows) * 7 % 365 + len(rows))
            rows.append(
                {
                    "id": f"{category}-{i:04d}",
                    "title": f"Title {i}",
                    "abstract": f"Abstract {i} of {category}",
                    "authors": None,
                    "categories": [category],
                    "primary_category": category,
                    "archive": category.split(".")[0],
                    "first_version_date": day,
                    "update_date": day + dt.timedelta(days=400),
                }
            )
    return pl.DataFrame(rows, schema=CONTRACT)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_split(root: Path, papers: pl.DataFrame | None = None, **params: dict) -> tuple[dict[str, pl.DataFrame], dict]:
    merged = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), params)
    (root / "params.yaml").write_text(yaml.safe_dump(merged))
    (root / "data/clean").mkdir(parents=True, exist_ok=True)
    (papers if papers is not None else papers_table()).write_parquet(root / "data/clean/papers.parquet")
    split.main()
    splits = {name: pl.read_parquet(root / f"data/split/{name}.parquet") for name in ("train", "eval", "test")}
    return splits, json.loads((root / "metrics/split.json").read_text())


def assignment(splits: dict[str, pl.DataFrame]) -> dict[str, str]:
    return {paper_id: name for name, frame in splits.items() for paper_id in frame["id"]}


def test_every_paper_in_exactly_one_split_with_the_contract_columns(project: Path) -> None:
    splits, metrics = run_split(project)
    ids = [paper_id for frame in splits.values() for paper_id in frame["id"]]
    assert sorted(ids) == sorted(papers_table()["id"])
    for frame in splits.values():
        assert frame.schema == pl.Schema(SPLIT_SCHEMA)
    assert {name: metrics[name] for name in splits} == {name: frame.height for name, frame in splits.items()}
    assert metrics["papers_in"] == metrics["papers_out"] == sum(SIZES.values())


def test_stratified_every_label_in_every_split(project: Path) -> None:
    splits, metrics = run_split(project, split={"eval_fraction": 0.1, "test_fraction": 0.2, "min_papers_per_label": 10})
    for name, frame in splits.items():
        assert set(frame["label"]) == {"cs.CV", "cs.CL", "hep-th", "math.AG", "other"}, name
    counts = {name: dict(frame["label"].value_counts().iter_rows()) for name, frame in splits.items()}
    assert (counts["train"]["cs.CV"], counts["eval"]["cs.CV"], counts["test"]["cs.CV"]) == (28, 4, 8)
    assert (counts["train"]["math.AG"], counts["eval"]["math.AG"], counts["test"]["math.AG"]) == (7, 1, 2)
    assert metrics["labels"] == 5 and metrics["labels_missing_from_a_split"] == []


def test_same_seed_same_split_other_seed_differs(project: Path) -> None:
    first, _ = run_split(project)
    shuffled = papers_table().sample(fraction=1.0, shuffle=True, seed=3)
    again, _ = run_split(project, shuffled)  # row order of the input does not matter
    assert assignment(again) == assignment(first)
    other, _ = run_split(project, shared={"seed": 7})
    assert assignment(other) != assignment(first)
    assert {k: v.height for k, v in other.items()} == {k: v.height for k, v in first.items()}


def test_the_split_key_of_a_paper_never_changes() -> None:
    """Every existing project's split (and DVC cache) rests on this key: a change would move papers between splits."""
    assert stable_order(pl.Series(["0704.0001", "2501.12345"]), 42).to_list() == [17721214213472432267, 3559568260934737765]
    assert stable_order(pl.Series(["0704.0001"]), 42, "sample").to_list() == [10488181299459271444]  # a salted draw differs


def test_the_copy_key_ignores_how_the_text_is_encoded() -> None:
    """An accent composed or not, a ligature, a soft hyphen inside a word: the same abstract to the reader."""
    from arxiv_embed.data.columns import same_abstract_key

    texts = ["We find caf\u00e9 networks.", "we find cafe\u0301 net\u00adworks", "We \ufb01nd CAF\u00c9 NETWORKS!", "We find cafe networks."]
    keys = pl.DataFrame({"text": texts}).select(same_abstract_key(pl.col("text")))["text"].to_list()
    assert keys[0] == keys[1] == keys[2] != keys[3]


@pytest.mark.parametrize("method", ["stratified", "time"])
def test_copies_of_one_abstract_share_a_split(project: Path, method: str) -> None:
    """A resubmission under a new id with another title (clean keeps it) must not train on a test abstract. A time
    split keeps a copy with its original, the older: its test holds only abstracts that first came out after the cut."""
    papers = papers_table()
    originals = papers.gather_every(4).head(20)  # of every label and age
    copies = originals.with_columns(id="copy-" + pl.col("id"), title="Retitled: " + pl.col("title"),
                                    abstract="  " + pl.col("abstract").str.to_uppercase() + ".\n", primary_category=pl.lit("cs.CL"),
                                    first_version_date=pl.col("first_version_date") + pl.duration(days=800))  # resubmitted later
    splits, metrics = run_split(project, pl.concat([papers, copies]), split={"method": method, "time_field": "first_version"})
    where = assignment(splits)
    assert {where[f"copy-{paper_id}"] == where[paper_id] for paper_id in originals["id"]} == {True}
    assert {where[paper_id] for paper_id in originals["id"]} >= {"train", "test"}  # the pairs span the splits
    assert metrics["same_abstract"] == {"papers": 40, "abstracts": 20}
    assert sum(metrics[name] for name in ("train", "eval", "test")) == papers.height + 20
    if method == "time":  # the date each abstract first came out: every one in train before every one in test
        first_out = {paper_id: date for paper_id, date in zip(papers["id"], papers["first_version_date"])}
        first_out |= {f"copy-{paper_id}": first_out[paper_id] for paper_id in originals["id"]}
        assert max(first_out[paper_id] for paper_id in splits["train"]["id"]) <= min(first_out[paper_id] for paper_id in splits["test"]["id"])
        # A test split of nothing but later copies would be empty: refused, naming the fix.
        few = pl.concat([papers.head(12), papers.filter(pl.col("primary_category") == "cs.CL").head(12)])  # two labels
        copies = few.with_columns(id="copy-" + pl.col("id"), first_version_date=pl.col("first_version_date") + pl.duration(days=3000))
        with pytest.raises(UserError, match=r"split.method=time: eval and test would be empty: every paper drawn for it is a later copy"):
            run_split(project, pl.concat([few, copies]), split={"method": "time", "time_field": "first_version"})


def test_abstracts_are_hashed_a_slice_at_a_time_with_progress(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """At 2.7M papers the hash takes a minute: progress lines between slices, and the same splits as in one piece.
    Copies in different slices still share a split."""
    papers = papers_table()
    copies = papers.head(10).with_columns(id="copy-" + pl.col("id"), abstract=pl.col("abstract").str.to_uppercase())
    whole, _ = run_split(project, pl.concat([papers, copies]))
    monkeypatch.setattr(split, "HASH_SLICE", 7)
    monkeypatch.setattr(split, "Progress", functools.partial(split.Progress, interval_s=0.0))  # a line per slice
    capsys.readouterr()
    sliced, _ = run_split(project, pl.concat([papers, copies]))
    assert all(whole[name].equals(sliced[name]) for name in whole)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("split: hashed")]
    assert len(lines) > 3 and lines[-1].startswith(f"split: hashed done: {papers.height + 10:,}/{papers.height + 10:,} abstracts")


def test_rare_labels_merged_into_other(project: Path) -> None:
    splits, metrics = run_split(project, split={"rare_labels": "other", "min_papers_per_label": 10})
    labels = pl.concat(splits.values())
    merged = labels.filter(pl.col("label") == "other")
    assert sorted(set(merged["primary_category"])) == ["cs.XX", "math.YY"] and merged.height == 6
    assert metrics["rare_labels"] == {"handling": "other", "count": 2, "papers": 6, "names": ["cs.XX", "math.YY"]}


def test_rare_labels_dropped_and_reported(project: Path) -> None:
    splits, metrics = run_split(project, split={"rare_labels": "drop", "min_papers_per_label": 12})
    kept = pl.concat(splits.values())
    assert set(kept["label"]) == {"cs.CV", "cs.CL", "hep-th"}
    assert metrics["papers_out"] == metrics["papers_in"] - metrics["rare_labels"]["papers"] == kept.height == 77
    assert metrics["rare_labels"]["names"] == ["cs.XX", "math.AG", "math.YY"]
    rejects = [json.loads(line) for line in (project / "data/split/rare_label_rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 16 and {row["reason"] for row in rejects} == {"rare_label"}


def test_label_by_archive(project: Path) -> None:
    splits, metrics = run_split(project, shared={"label": "archive"}, split={"min_papers_per_label": 10})
    assert set(splits["test"]["label"]) == {"cs", "hep-th", "math"} and metrics["label"] == "archive"
    assert metrics["rare_labels"]["count"] == 0


def test_time_split_trains_on_older_papers(project: Path) -> None:
    splits, metrics = run_split(project, split={"method": "time", "time_field": "first_version"})
    dates = {name: frame["first_version_date"] for name, frame in splits.items()}
    assert dates["train"].max() <= dates["eval"].min() and dates["eval"].max() <= dates["test"].min()
    assert (splits["test"].height, splits["eval"].height) == (19, 9)  # 20% and 10% of 93
    assert metrics["time"]["field"] == "first_version_date" and metrics["time"]["papers_using_fallback"] == 0


def test_time_split_falls_back_to_the_other_date(project: Path) -> None:
    papers = papers_table().with_columns(
        first_version_date=pl.when(pl.col("id").str.ends_with("1")).then(None).otherwise("first_version_date")
    )
    splits, metrics = run_split(project, papers, split={"method": "time", "time_field": "first_version"})
    missing = papers.filter(pl.col("first_version_date").is_null())
    assert metrics["time"]["papers_using_fallback"] == missing.height > 0
    # update_date is 400 days after submission: the papers that fall back sort as newer ones.
    newest_fallback = missing.sort("update_date")["id"][-1]
    assert assignment(splits)[newest_fallback] == "test"
    date = pl.coalesce("first_version_date", "update_date")
    assert splits["train"].select(date.max()).item() <= splits["test"].select(date.min()).item()


def test_time_split_keeps_papers_without_a_date_in_train_or_refuses(project: Path, capsys: pytest.CaptureFixture) -> None:
    no_date = pl.col("id").str.ends_with("1") | pl.col("id").str.ends_with("2")
    papers = papers_table().with_columns(first_version_date=pl.when(no_date).then(None).otherwise("first_version_date"),
                                         update_date=pl.when(no_date).then(None).otherwise("update_date"))
    splits, metrics = run_split(project, papers, split={"method": "time", "time_field": "first_version"})
    undated = set(papers.filter(no_date)["id"])
    assert metrics["time"]["papers_without_date"] == len(undated) > 0 and undated <= set(splits["train"]["id"])
    assert f"{len(undated)} papers have no date at all: in train, unless a copy of their abstract is held out" in capsys.readouterr().out
    # Fewer dated papers than test and eval take: undated ones would fill them (nulls sort last), so it is refused.
    papers = papers.with_columns(first_version_date=pl.when(pl.col("id").str.ends_with("0")).then("first_version_date"),
                                 update_date=pl.lit(None, dtype=pl.Date))
    with pytest.raises(UserError, match=r"puts the 28 newest papers in test and eval, but only 12 of 93 papers have a date"):
        run_split(project, papers, split={"method": "time", "time_field": "first_version"})


def test_update_date_field(project: Path) -> None:
    # Updates in the reverse order of submission: the split must follow the field it was told to.
    papers = papers_table().with_columns(
        update_date=pl.lit(dt.date(2015, 1, 1)) - pl.duration(days=pl.col("first_version_date").rank("ordinal").cast(pl.Int64)))
    splits, metrics = run_split(project, papers, split={"method": "time", "time_field": "update_date"})
    assert splits["train"]["update_date"].max() <= splits["test"]["update_date"].min()
    assert splits["train"]["first_version_date"].min() > splits["test"]["first_version_date"].max()  # not by submission
    assert metrics["time"]["field"] == "update_date"


def test_empty_table_fails_clearly(project: Path) -> None:
    with pytest.raises(UserError, match=r"data/clean/papers.parquet has no rows: check the clean params"):
        run_split(project, papers_table().clear())


def run_stage(module: str, root: Path) -> subprocess.CompletedProcess:
    """`python -m stages.<module>` in `root`, as DVC runs it (through arxiv_embed.errors.run)."""
    return subprocess.run([sys.executable, "-m", f"stages.{module}"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_missing_input_or_column_is_one_line_naming_the_stage_to_rerun(project: Path) -> None:
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = run_stage("split", project)
    assert (result.returncode, result.stderr) == (1, "split: error: data/clean/papers.parquet is missing: run `dvc repro clean` first\n")

    (project / "data/clean").mkdir(parents=True)
    papers_table().drop("first_version_date").write_parquet(project / "data/clean/papers.parquet")  # an older clean's table
    result = run_stage("split", project)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("split: error: data/clean/papers.parquet has no column(s) ['first_version_date'] (it has [")
    assert result.stderr.endswith("]): rerun `dvc repro clean`\n") and not (project / "data/split").exists()

    whole = (project / "data/clean/papers.parquet").read_bytes()
    for broken in (b"version https://git-lfs.github.com/spec/v1\n", whole[:1000]):  # a git-lfs pointer; a cut-off copy
        (project / "data/clean/papers.parquet").write_bytes(broken)
        result = run_stage("split", project)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("split: error: data/clean/papers.parquet is not a readable parquet file (")
        assert result.stderr.endswith("): rerun `dvc repro clean`\n")


# ("other", 26, 1): one label and `other`, which no lens counts as one (a cluster of one label scores 1.0 for any model)
@pytest.mark.parametrize(("rare_labels", "minimum", "enough"), [("other", 41, 0), ("other", 26, 1), ("drop", 30, 1)])
def test_too_few_papers_for_two_labels_fail_here_not_a_stage_later(project: Path, rare_labels: str, minimum: int, enough: int) -> None:
    """A small prefix of a file interleaved by category leaves every label rare: merged into one 'other', or all but
    one dropped; nothing downstream could compare labels."""
    with pytest.raises(UserError, match=rf"{enough} of the 6 labels of the 93 papers have split.min_papers_per_label={minimum} papers "
                                        r"or more \(the largest: cs.CV 40, cs.CL 25, hep-th 12\); the triplets and the label lenses need two"):
        run_split(project, split={"rare_labels": rare_labels, "min_papers_per_label": minimum})
    assert not (project / "data/split").exists()


def test_one_label_is_named_with_the_fix_that_helps(project: Path) -> None:
    with pytest.raises(UserError, match=r"every one of the 40 papers has the label cs.CV \(shared.label=primary_category\): the "
                                        r"triplets and the label lenses need two labels; use papers of more categories"):
        run_split(project, papers_table({"cs.CV": 40}))
