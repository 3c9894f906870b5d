"""make_triplets on small split files the tests write: the invariants of every row, and balance."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

from arxiv_embed.data.columns import same_abstract_key
from arxiv_embed.data.triplets import graded_partners
from stages import make_triplets
from tests.conftest import ROOT, deep_update
from tests.test_split import papers_table, run_stage

# Per split, primary category -> papers. hep-th is alone in its archive (no hard negative exists);
# cs.LO has a single paper in eval (it can be a negative but never an anchor).
SPLITS = {
    "train": {"cs.CV": 12, "cs.CL": 6, "cs.LO": 3, "math.AG": 5, "math.NT": 4, "hep-th": 5},
    "eval": {"cs.CV": 3, "cs.CL": 2, "cs.LO": 1, "math.AG": 2, "math.NT": 2, "hep-th": 2},
    "test": {"cs.CV": 4, "cs.CL": 3, "cs.LO": 2, "math.AG": 2, "math.NT": 2, "hep-th": 2},
}
COUNTS = {"triplets_per_split": {"train": 120, "eval": 40, "test": 50}, "same_label_pairs_per_split": {"train": 60, "eval": 20, "test": 30}}


def split_table(name: str, label: str) -> pl.DataFrame:
    table = papers_table(SPLITS[name]).with_columns(id=pl.lit(f"{name}/") + pl.col("id"), title=pl.lit(f"{name} ") + pl.col("title"))
    return table.with_columns(abstract=pl.lit("abstract of ") + pl.col("id"), label=pl.col(label))


def keyed(table: pl.DataFrame) -> pl.DataFrame:
    """The table as split writes it: with each abstract's key."""
    return table.with_columns(abstract_key=same_abstract_key(pl.col("abstract")))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(root: Path, label: str = "primary_category", shuffle: int | None = None, edit: Callable[[pl.DataFrame], pl.DataFrame] = lambda t: t,
        **params: object) -> tuple[dict[str, pl.DataFrame], dict]:
    """The stage on SPLITS' files (rows shuffled with seed `shuffle`, if given; each table through `edit`) with
    make_triplets `params`."""
    merged = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), {"make_triplets": deep_update(copy.deepcopy(COUNTS), params)})
    (root / "params.yaml").write_text(yaml.safe_dump(merged))
    (root / "data/split").mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        table = keyed(edit(split_table(name, label)))
        table = table if shuffle is None else table.sample(fraction=1.0, shuffle=True, seed=shuffle)
        table.write_parquet(root / f"data/split/{name}.parquet")
    make_triplets.main()
    frames = {f.stem: pl.read_parquet(f) for f in sorted((root / "data/triplets").glob("*.parquet"))}
    return frames, json.loads((root / "metrics/make_triplets.json").read_text())


def test_files_and_columns(project: Path) -> None:
    frames, _ = run(project)
    kinds = ("triplets", "title_abstract", "same_label", "graded_pairs")
    assert sorted(frames) == sorted([*(f"{s}_{k}" for s in SPLITS for k in kinds), "train_papers"])
    assert frames["train_triplets"].columns == [
        "anchor", "positive", "negative", "anchor_id", "positive_id", "negative_id", "label", "negative_label", "negative_type",
    ]  # fmt: skip
    assert frames["train_title_abstract"].columns == ["anchor", "positive", "id", "label"]
    assert frames["train_same_label"].columns == ["anchor", "positive", "anchor_id", "positive_id", "label"]
    assert frames["train_graded_pairs"].columns == ["anchor", "positive", "anchor_id", "positive_id", "score", "same_label"]
    assert all(dtype == pl.String for name, frame in frames.items() if "graded" not in name and name != "train_papers" for dtype in frame.dtypes)


@pytest.mark.parametrize("name", list(SPLITS))
def test_triplet_invariants(project: Path, name: str) -> None:
    frames, metrics = run(project, hard_negative_fraction=0.5)
    triplets, papers = frames[f"{name}_triplets"], split_table(name, "primary_category")
    label = dict(papers.select("id", "label").iter_rows())
    archive = dict(papers.select("id", "archive").iter_rows())
    abstract = dict(papers.select("id", "abstract").iter_rows())
    assert triplets.height == COUNTS["triplets_per_split"][name] == metrics[name]["triplets"]
    for row in triplets.iter_rows(named=True):
        a, p, n = row["anchor_id"], row["positive_id"], row["negative_id"]
        assert {a, p, n} <= set(label), "an id from another split"
        assert len({a, p, n}) == 3, "a paper twice in one triplet"
        assert label[a] == label[p] == row["label"] and label[n] == row["negative_label"] != row["label"]
        assert (row["anchor"], row["positive"], row["negative"]) == (abstract[a], abstract[p], abstract[n])
        if row["negative_type"] == "hard":
            assert archive[n] == archive[a] and label[n] != label[a]
        else:
            assert row["negative_type"] == "random"
    hard = triplets.filter(pl.col("negative_type") == "hard")
    assert hard.height == metrics[name]["hard_negatives"] > 0
    # hep-th has no other category in its archive: its anchors fall back to random negatives.
    assert hard.filter(pl.col("label") == "hep-th").is_empty()
    assert hard.height + metrics[name]["random_negatives"] == triplets.height


def test_labels_are_balanced_and_single_paper_labels_never_anchor(project: Path) -> None:
    frames, metrics = run(project)
    train = frames["train_triplets"]["label"].value_counts()
    assert set(train["label"]) == set(SPLITS["train"]) and train["count"].max() - train["count"].min() <= 1
    eval_labels = set(frames["eval_triplets"]["label"]) | set(frames["eval_same_label"]["label"])
    assert "cs.LO" not in eval_labels and len(eval_labels) == 5
    assert "cs.LO" in set(frames["eval_triplets"]["negative_label"])  # still usable as a negative
    assert metrics["eval"]["single_paper_labels"] == 1 and metrics["train"]["single_paper_labels"] == 0


def test_copies_of_one_abstract_never_pair_with_each_other(project: Path) -> None:
    """split keeps a paper's copies (retitled, re-filed under another category) in one split: as each other's
    negative they would be unsolvable, as each other's positive trivial. One copy of each abstract takes part."""
    def with_copies(table: pl.DataFrame) -> pl.DataFrame:  # every third paper: the next one's abstract, re-cased
        abstracts = table["abstract"].to_list()
        for i in range(0, len(abstracts) - 1, 3):
            abstracts[i] = abstracts[i + 1].upper() + "."
        return table.with_columns(abstract=pl.Series(abstracts))

    frames, metrics = run(project, edit=with_copies)
    for split in SPLITS:
        for kind, partners in (("triplets", ("positive", "negative")), ("same_label", ("positive",)), ("graded_pairs", ("positive",))):
            keys = frames[f"{split}_{kind}"].select(same_abstract_key(pl.col(c)).alias(c) for c in ("anchor", *partners))
            assert keys.filter(pl.any_horizontal(pl.col(c) == pl.col("anchor") for c in partners)).is_empty(), (split, kind)
        assert metrics[split]["same_abstract_copies_left_out"] == len(range(0, sum(SPLITS[split].values()) - 1, 3))
    sample = frames["train_papers"]  # the labels kind, mining and evaluate's classifier read it
    assert sample.height == sum(SPLITS["train"].values()) - metrics["train"]["same_abstract_copies_left_out"]
    assert sample.select(same_abstract_key(pl.col("abstract"))).is_unique().all()


@pytest.mark.parametrize("label", ["primary_category", "archive"])
def test_a_paper_cross_listed_in_the_anchors_label_is_never_its_negative(project: Path, label: str) -> None:
    """A cs.CL paper also listed in cs.CV is a cs.CV paper too: as a cs.CV anchor's negative (the lens's and the gate's
    "error") it would be ambiguous; mining and the graded pairs already read it so."""
    def cross_list(table: pl.DataFrame) -> pl.DataFrame:  # every cs.CL paper also in cs.CV, every math.NT one also in cs.LO
        extra = pl.col("primary_category").replace_strict({"cs.CL": "cs.CV", "math.NT": "cs.LO"}, default=None)
        return table.with_columns(categories=pl.when(extra.is_null()).then(pl.col("categories"))
                                  .otherwise(pl.concat_list("categories", extra)))

    frames, metrics = run(project, label=label, edit=cross_list, hard_negative_fraction=1.0)
    for split in SPLITS:
        categories = dict(keyed(cross_list(split_table(split, label))).select("id", "categories").iter_rows())
        triplets = frames[f"{split}_triplets"]
        assert triplets.height == COUNTS["triplets_per_split"][split]
        listed_in = [row["label"] in {*categories[row["negative_id"]], *(c.split(".")[0] for c in categories[row["negative_id"]])}
                     for row in triplets.iter_rows(named=True)]
        assert not any(listed_in), split
        if label == "primary_category":  # cs.CV's hard negatives: cs.LO only (cs.CL is listed in it)
            assert set(triplets.filter(label="cs.CV", negative_type="hard")["negative_label"]) == {"cs.LO"}


def test_hard_fraction_zero_and_one(project: Path) -> None:
    frames, _ = run(project, hard_negative_fraction=0.0)
    assert set(frames["train_triplets"]["negative_type"]) == {"random"}
    frames, metrics = run(project, hard_negative_fraction=1.0)
    types = frames["train_triplets"].group_by("label").agg(pl.col("negative_type").unique())
    assert dict(types.iter_rows()) == {label: ["random"] if label == "hep-th" else ["hard"] for label in SPLITS["train"]}
    assert metrics["train"]["hard_requested"] == 120


def test_archive_labels_have_only_random_negatives(project: Path) -> None:
    frames, _ = run(project, label="archive", hard_negative_fraction=1.0)
    triplets = frames["train_triplets"]
    assert set(triplets["negative_type"]) == {"random"} and set(triplets["label"]) == {"cs", "math", "hep-th"}
    assert (triplets["label"] != triplets["negative_label"]).all()


def test_pairs(project: Path) -> None:
    frames, metrics = run(project)
    for name in SPLITS:
        papers = split_table(name, "primary_category")
        title_abstract = frames[f"{name}_title_abstract"]
        expected = papers.sort("id").select(anchor="title", positive="abstract", id="id", label="label")  # every paper, in id order
        assert title_abstract.equals(expected)
        same = frames[f"{name}_same_label"]
        label = dict(papers.select("id", "label").iter_rows())
        assert same.height == COUNTS["same_label_pairs_per_split"][name] == metrics[name]["same_label"]
        assert (same["anchor_id"] != same["positive_id"]).all()
        assert [label[i] for i in same["anchor_id"]] == [label[i] for i in same["positive_id"]] == same["label"].to_list()
        assert same.select(pl.col("anchor") == pl.lit("abstract of ") + pl.col("anchor_id")).to_series().all()


def test_seeded(project: Path) -> None:
    first, _ = run(project)
    again, _ = run(project)
    assert all(first[k].equals(again[k]) for k in first)
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("seed: 42", "seed: 43"))
    make_triplets.main()
    other = pl.read_parquet(project / "data/triplets/train_triplets.parquet")
    assert not other.equals(first["train_triplets"])


def test_a_count_changes_its_own_kind_only(project: Path) -> None:
    """A sweep of one count (or of hard_negative_fraction, a triplet knob) must not redraw the other kinds' pairs,
    which a pair loss or hard-negative mining trains on."""
    first, _ = run(project, graded_pairs_per_split={"train": 40, "eval": 10, "test": 10})
    more, _ = run(project, graded_pairs_per_split={"train": 40, "eval": 10, "test": 10},
                  triplets_per_split={"train": 150, "eval": 40, "test": 50}, hard_negative_fraction=0.2)
    changed = sorted(name for name in first if not first[name].equals(more[name]))
    assert changed == ["eval_triplets", "test_triplets", "train_triplets"], changed  # the fraction: every split's
    fewer, _ = run(project, graded_pairs_per_split={"train": 40, "eval": 10, "test": 10},
                   same_label_pairs_per_split={"train": 30, "eval": 20, "test": 30})
    assert sorted(name for name in first if not first[name].equals(fewer[name])) == ["train_same_label"]


def test_a_split_with_one_label_gives_no_triplets_and_a_test_split_so_is_refused(project: Path, capsys: pytest.CaptureFixture) -> None:
    from arxiv_embed.errors import UserError

    frames, _ = run(project)  # writes the usual files first
    one_label = keyed(papers_table({"cs.CV": 5}).with_columns(label=pl.col("primary_category")))
    one_label.write_parquet(project / "data/split/eval.parquet")
    capsys.readouterr()
    make_triplets.main()
    eval_triplets = pl.read_parquet(project / "data/triplets/eval_triplets.parquet")
    assert eval_triplets.is_empty() and eval_triplets.columns == frames["eval_triplets"].columns
    assert pl.read_parquet(project / "data/triplets/eval_same_label.parquet").height == COUNTS["same_label_pairs_per_split"]["eval"]
    out = capsys.readouterr().out
    assert "only 0 of 40 triplets: one label only: no negative in eval" in out
    assert "same_label: 12 distinct of 20 rows in eval (a small split repeats draws)" in out  # 5 papers, drawn with replacement
    # Labels of different archives: no hard negative (same archive, another label) exists, and the stage says so.
    keyed(papers_table({"cs.CV": 5, "math.AG": 5}).with_columns(label=pl.col("primary_category"))).write_parquet(project / "data/split/eval.parquet")
    make_triplets.main()
    assert "only 0 of 20 hard negatives (same archive, another label): too few labels share an archive in eval" in capsys.readouterr().out
    # evaluate's triplet lens scores the test split's: none is refused here, naming the cause, and nothing is replaced.
    one_label.write_parquet(project / "data/split/test.parquet")
    with pytest.raises(UserError, match=r"no test triplet can be made from the 5 test papers of 1 label\(s\) \(cs.CV\)"):
        make_triplets.main()
    assert pl.read_parquet(project / "data/triplets/test_triplets.parquet").height == COUNTS["triplets_per_split"]["test"]  # the last run's
    with pytest.raises(UserError, match=r"make_triplets.triplets_per_split.test=0.0001 makes 0 triplets of 15 test papers"):
        run(project, triplets_per_split={"test": 0.0001})  # a per-paper count that rounds to 0


def test_graded_pairs_follow_arxiv_structure() -> None:
    """Each pair's score is its real relation: same label 1.0 > shared cross-list category 0.67 >
    same archive 0.33 > other 0.0; every grade occurs, and a paper is never paired with itself."""
    import numpy as np

    rows = []
    for i in range(60):
        primary = ["cs.CL", "cs.LG", "cs.CV", "math.ST", "stat.ML", "hep-th"][i % 6]
        cross = {"cs.CL": ["cs.LG"], "math.ST": ["stat.ML"], "stat.ML": ["cs.LG"]}.get(primary, [])
        rows.append({"id": str(i), "abstract": f"abstract {i}", "label": primary, "archive": primary.split(".")[0],
                     "categories": [primary, *cross]})
    papers = pl.DataFrame(rows)
    anchors, partners, grades = graded_partners(papers, 400, np.random.default_rng(0))
    assert len(anchors) == 400 and (anchors != partners).all() and set(grades) == {0, 1, 2, 3}
    label, archive, categories = papers["label"].to_list(), papers["archive"].to_list(), papers["categories"].to_list()
    for a, b, grade in zip(anchors, partners, grades):
        shared = bool(set(categories[a]) & set(categories[b]))
        expected = 3 if label[a] == label[b] else 2 if shared else 1 if archive[a] == archive[b] else 0
        assert grade == expected, (categories[a], categories[b])


def test_the_merged_other_label_is_never_a_shared_label() -> None:
    """split merges rare labels into `other`: a math.GT paper and a nucl-ex one share no subject, so neither is the
    other's positive, nor a same-label (1.0) graded pair; `other` papers are still negatives."""
    from arxiv_embed.data.triplets import build

    rows = [{"id": f"c{i}", "abstract": f"cs {i}", "label": "cs.LG", "archive": "cs", "primary_category": "cs.LG",
             "categories": ["cs.LG"]} for i in range(20)]
    rows += [{"id": f"o{i}", "abstract": f"rare {i}", "label": "other", "archive": archive, "primary_category": category,
              "categories": [category]} for i, (archive, category) in enumerate([("math", "math.GT"), ("nucl-ex", "nucl-ex")] * 10)]
    rows += [{"id": f"m{i}", "abstract": f"math {i}", "label": "math.ST", "archive": "math", "primary_category": "math.ST",
              "categories": ["math.ST"]} for i in range(20)]
    papers = pl.DataFrame(rows).with_columns(title=pl.col("abstract"), abstract_key=pl.col("abstract").hash())
    made = build(papers, 300, 300, 0.5, [0], n_graded=600)
    assert "other" not in set(made["triplets"]["label"]) and "other" not in set(made["same_label"]["label"])
    assert "other" in set(made["triplets"]["negative_label"])
    graded = made["graded_pairs"].join(papers.select(pl.col("id").alias("anchor_id"), "label"), on="anchor_id")
    assert graded.filter(pl.col("label") == "other", pl.col("score") == 1.0).is_empty()
    assert graded.filter(pl.col("label") == "other").height > 0 and graded.filter(pl.col("score") == 1.0).height > 0


def test_every_grade_drawn_is_given_when_the_anchor_has_a_partner_of_it() -> None:
    """A category crowded by the anchor's own label (200 papers of cs.LG, 3 of stat.ML cross-listed to cs.LG): grade 2's
    partners are the 3, and the pair must not fall to a lower grade for it (16 draws from the category missed ~80%).
    Nor may grade 1, where most of the archive's other labels share a category (cs.CL). The drawn grades stay even."""
    import numpy as np

    rows = [{"label": "cs.LG", "archive": "cs", "categories": ["cs.LG"]} for _ in range(200)]
    rows += [{"label": "stat.ML", "archive": "stat", "categories": ["stat.ML", "cs.LG"]} for _ in range(3)]
    rows += [{"label": "cs.CL", "archive": "cs", "categories": ["cs.CL", "cs.LG"]} for _ in range(60)]
    rows += [{"label": "cs.CV", "archive": "cs", "categories": ["cs.CV"]} for _ in range(15)]
    rows += [{"label": "math.AG", "archive": "math", "categories": ["math.AG"]} for _ in range(20)]
    papers = pl.DataFrame(rows)
    lg = np.flatnonzero(papers["label"] == "cs.LG")
    anchors, partners, grades = graded_partners(papers, 4000, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    drawn_anchors, drawn_grades = rng.integers(papers.height, size=4000), rng.integers(4, size=4000)
    assert len(anchors) == 4000 and (anchors == drawn_anchors).all() and (anchors != partners).all()
    from_lg = np.isin(anchors, lg)
    assert (grades[from_lg] == drawn_grades[from_lg]).all()  # cs.LG has a partner of every grade
    assert set(papers["label"].gather(partners[from_lg & (grades == 2)])) == {"stat.ML", "cs.CL"}
    assert set(papers["label"].gather(partners[from_lg & (grades == 1)])) == {"cs.CV"}
    assert abs(np.bincount(grades[from_lg], minlength=4) / from_lg.sum() - 0.25).max() < 0.05


def test_counts_given_per_paper_grow_with_the_train_sample(project: Path) -> None:
    """Decimal counts are per paper of the (sampled) train split, integers stay counts, "all" is one per
    paper; the train kinds are drawn from make_triplets.max_train_papers papers only, written beside them."""
    frames, metrics = run(project, max_train_papers=20, triplets_per_split={"train": 1.5, "eval": 40, "test": 50},
                          same_label_pairs_per_split={"train": "all", "eval": 20, "test": 30})
    sample = frames["train_papers"]
    assert sample.height == metrics["train"]["papers"] == 20 and metrics["train"]["split_papers"] == sum(SPLITS["train"].values())
    assert frames["train_triplets"].height == 30 and frames["train_same_label"].height == 20
    assert frames["eval_triplets"].height == 40
    used = set(frames["train_triplets"]["anchor_id"]) | set(frames["train_triplets"]["negative_id"]) | set(frames["train_title_abstract"]["id"])
    assert used <= set(sample["id"])


def test_the_split_files_row_order_changes_nothing(project: Path) -> None:
    """The same papers listed in another order (another source, or a snapshot re-sorted) give the same sample,
    pairs and triplets: every draw reads the papers in id order."""
    frames, _ = run(project, max_train_papers=20)
    for seed in (1, 2):
        shuffled, _ = run(project, shuffle=seed, max_train_papers=20)
        assert all(shuffled[name].equals(frame) for name, frame in frames.items()), seed


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_missing_split_file_or_column_is_one_line_naming_the_stage_to_rerun(project: Path, split: str) -> None:
    run(project)  # a complete run first: its outputs must survive the failed one
    before = {f.name: f.read_bytes() for f in (project / "data/triplets").iterdir()}
    (project / f"data/split/{split}.parquet").unlink()
    result = run_stage("make_triplets", project)
    assert (result.returncode, result.stderr) == (
        1, f"make_triplets: error: data/split/{split}.parquet is missing: run `dvc repro split` first\n")

    keyed(split_table(split, "primary_category")).drop("archive").write_parquet(project / f"data/split/{split}.parquet")
    result = run_stage("make_triplets", project)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"make_triplets: error: data/split/{split}.parquet has no column(s) ['archive'] (it has [")
    assert result.stderr.endswith("]): rerun `dvc repro split`\n")
    assert {f.name: f.read_bytes() for f in (project / "data/triplets").iterdir()} == before
