"""clean on the real samples and on small files the tests write, bad lines included."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from arxiv_embed.data import dedup
from stages import clean
from arxiv_embed.errors import InputError, UserError
from arxiv_embed.data import records
from arxiv_embed.data.columns import PAPER_SCHEMA
from tests.conftest import ROOT, deep_update

CONTRACT = PAPER_SCHEMA  # the contract clean, split and make_triplets agree on


def paper(paper_id: str, **fields: object) -> dict:
    """A usable Kaggle-schema record; `fields` override any key."""
    base = {
        "id": paper_id,
        "submitter": "A. Author",
        "authors": "A. Author and B. Author",
        "title": f"On the theory of paper {paper_id}",
        "comments": "12 pages",
        "categories": "hep-th math-ph",
        "abstract": f"  We study paper {paper_id} and\n  show " + " ".join(f"result{i}" for i in range(25)) + ".\n",
        "versions": [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"}],
        "update_date": "2008-11-26",
    }
    return base | fields


def write_input(root: Path, lines: list[dict | str | bytes], gzipped: bool = True) -> Path:
    raw = b"".join(
        (line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n"
        for line in lines
    )
    path = root / "data/raw/arxiv.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gzipped else raw)
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory (params.yaml only) as the working directory."""
    monkeypatch.chdir(tmp_path)
    set_params(tmp_path)
    return tmp_path


def set_params(root: Path, **clean_params: object) -> None:
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), {"clean": clean_params})
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def run_clean(root: Path) -> tuple[pl.DataFrame, list[dict], dict]:
    clean.main()
    rejects = [json.loads(line) for line in (root / "data/clean/rejects.jsonl").read_text().splitlines()]
    return pl.read_parquet(root / "data/clean/papers.parquet"), rejects, json.loads((root / "metrics/clean.json").read_text())


def reasons(rejects: list[dict]) -> dict[int, str]:
    return {row["line"]: row["reason"] for row in rejects}


def test_real_kaggle_sample(project: Path, kaggle_sample: Path) -> None:
    (project / "data/raw").mkdir(parents=True)
    (project / "data/raw/arxiv.jsonl.gz").write_bytes(kaggle_sample.read_bytes())
    papers, rejects, metrics = run_clean(project)

    assert papers.schema == pl.Schema(CONTRACT)
    assert metrics["records_in"] == 500
    assert metrics["records_in"] == metrics["records_out"] + metrics["rejected_total"] == papers.height + len(rejects)
    assert metrics["rejected"]["withdrawn"] == 4  # 0704.0156, 0704.0213, 0704.0374 and 0704.0480
    assert metrics["archives"]["cond-mat"] > metrics["archives"]["cs"] > 0
    first = papers.row(0, named=True)
    assert first["id"] == "0704.0001"
    assert first["title"] == "Calculation of prompt diphoton production cross sections at Tevatron and LHC energies"
    assert first["abstract"].startswith("A fully differential calculation in perturbative quantum chromodynamics is presented")
    assert first["primary_category"] == first["archive"] == "hep-ph" and first["categories"] == ["hep-ph"]
    assert first["first_version_date"] == dt.date(2007, 4, 2) and first["update_date"] == dt.date(2008, 11, 26)
    second = papers.row(1, named=True)
    assert (second["primary_category"], second["archive"], second["categories"]) == ("math.CO", "math", ["math.CO", "cs.CG"])
    assert papers.filter(pl.col("title").str.contains(r"\s\s|\n") | pl.col("abstract").str.contains(r"\s\s|\n|^\s|\s$")).is_empty()
    assert papers["abstract"].str.contains(r"\$\\alpha").any()  # LaTeX kept as text
    assert "0704.0156" not in papers["id"]  # "This paper has been withdrawn by the authors."
    assert papers["id"].is_unique().all() and papers["id"].str.contains(r"^0704\.\d{4}$").all()


def test_default_sample_with_null_versions(project: Path, sample: Path) -> None:
    (project / "data/raw").mkdir(parents=True)
    (project / "data/raw/arxiv.jsonl.gz").write_bytes(sample.read_bytes())
    papers, _, metrics = run_clean(project)
    assert metrics["records_in"] == 4830 and papers.height > 4700
    # versions is null in most of these listing records: clean keeps them, without a first-version date
    assert 0 < papers["first_version_date"].null_count() < papers.height
    assert papers["update_date"].min() >= dt.date(2020, 1, 1)
    assert len(metrics["archives"]) == 18 and metrics["archives"]["cs"] > 700
    # Most papers first, equal counts by name (the sample has ties): the same bytes on every run.
    order = list(metrics["archives"].items())
    assert order == sorted(order, key=lambda item: (-item[1], item[0])) and len({n for _, n in order}) < len(order)


def test_a_date_that_does_not_parse_keeps_its_paper_and_is_counted(project: Path, capsys: pytest.CaptureFixture) -> None:
    write_input(project, [paper("0704.0001"), paper("0704.0002", update_date="not a date"),
                          paper("0704.0003", versions=[{"version": "v1", "created": "2 April 2007"}]),
                          paper("0704.0004", versions=None, update_date=None),  # no date given: nothing to count
                          paper("0704.0005", update_date="never", abstract="Too short.")])  # rejected: not counted
    papers, _, metrics = run_clean(project)
    assert papers["id"].to_list() == ["0704.0001", "0704.0002", "0704.0003", "0704.0004"]
    assert papers["update_date"].null_count() == 2 and papers["first_version_date"].null_count() == 2
    assert metrics["unreadable_dates"] == {"first_version": 1, "update_date": 1}
    out = capsys.readouterr().out
    assert "unreadable first_version dates: 1 (kept, without that date)" in out and "unreadable update_date dates: 1" in out


def test_ids_stay_strings(project: Path) -> None:
    write_input(project, [paper("0704.0010"), paper("0704.1000"), paper("1501.00100"), paper("hep-th/9901001")])
    papers, _, _ = run_clean(project)
    assert papers["id"].to_list() == ["0704.0010", "0704.1000", "1501.00100", "hep-th/9901001"]


def test_malformed_and_unusable_lines_are_rejected_with_line_numbers(project: Path) -> None:
    set_params(project, max_malformed_fraction=0.5)
    write_input(
        project,
        [
            paper("0704.0001"),
            '{"id": "0704.0002", "title": "cut off',  # a truncated line
            "[1, 2, 3]",  # JSON, but not a record
            paper("0704.0003", versions="v1"),  # JSON, a field of the wrong type
            "",  # blank lines are not records
            paper("0704.0004", title="  \n "),
            paper("0704.0005", abstract=None),
            {k: v for k, v in paper("0704.0006").items() if k != "categories"},
            paper("0704.0007", categories='["hep-th"]'),
            paper("", title="no id"),
            b'{"id": "0704.0008", "title": "\xff\xfe bad bytes"}',
            paper("0704.0009"),
        ],
    )
    papers, rejects, metrics = run_clean(project)
    assert papers["id"].to_list() == ["0704.0001", "0704.0009"]
    assert reasons(rejects) == {
        2: "malformed_json",
        3: "malformed_json",
        4: "wrong_type",
        6: "missing_title",
        7: "missing_abstract",
        8: "missing_categories",
        9: "invalid_categories",
        10: "missing_id",
        11: "malformed_json",
    }
    by_line = {row["line"]: row for row in rejects}
    assert by_line[2]["raw"] == '{"id": "0704.0002", "title": "cut off'
    # Each reject names the id its line gives, cut off or of the wrong type; a line that names none has none.
    assert [by_line[n]["id"] for n in (2, 3, 4, 11)] == ["0704.0002", None, "0704.0003", "0704.0008"]
    assert by_line[4]["fields"] == "versions: string, not a list of objects" and "fields" not in by_line[2]
    assert by_line[6]["id"] == "0704.0004" and json.loads(by_line[6]["raw"])["id"] == "0704.0004"
    assert metrics["records_in"] == 11 and metrics["records_out"] == 2 and metrics["rejected_total"] == 9
    assert metrics["rejected"]["malformed_json"] == 3 and metrics["rejected"]["wrong_type"] == 1


def test_string_fields_of_another_json_type_are_rejected_not_cast(project: Path) -> None:
    """read_ndjson would cast 704.001 to "704.001" and a list title to its JSON text: such records go
    to the rejects as wrong_type with their line, and their neighbours (one with "id": 5 only inside
    its text, one with an unknown nested object holding a number title) are kept."""
    write_input(
        project,
        [
            paper("0704.0001", title='The "id": 5 trick'),
            b'{"id":704.001,"title":"Pandas wrote this","abstract":"' + b"word " * 30 + b'","categories":"hep-th"}',
            paper("0704.0003", title=["Graph", "nets"]),
            paper("0704.0004", extra={"title": 5}),
            paper("0704.0005", categories=None, comments=12),
            paper("0704.0006"),
            # "\u0069d" is "id" to every JSON parser, polars' included: the key's spelling must not hide the number.
            b'{"\\u0069d":704.007,"title":"Escaped key","abstract":"' + b"word " * 30 + b'","categories":"hep-th"}',
            b'{"\\u0069d":"0704.0008","title":"Caf\\u00e9, an escaped key of the right type","abstract":"' + b"word " * 30
            + b'","categories":"hep-th"}',
        ],
    )
    papers, rejects, metrics = run_clean(project)
    assert papers["id"].to_list() == ["0704.0001", "0704.0004", "0704.0006", "0704.0008"]
    assert reasons(rejects) == {2: "wrong_type", 3: "wrong_type", 5: "wrong_type", 7: "wrong_type"}
    assert json.loads(rejects[0]["raw"])["id"] == 704.001 and json.loads(rejects[1]["raw"])["title"] == ["Graph", "nets"]
    assert json.loads(rejects[3]["raw"])["id"] == 704.007
    assert [row["id"] for row in rejects] == [None, "0704.0003", "0704.0005", None]  # 704.001 is no id to look up
    assert [row["fields"] for row in rejects] == ["id: number", "title: list", "comments: number", "id: number"]
    assert metrics["rejected"]["wrong_type"] == 4 and metrics["rejected_total"] == 4


def test_a_rejected_line_s_id_is_written_as_text_or_left_out(project: Path) -> None:
    """An id written as a number is named as text. JSON's \\ud800 escape decodes to a lone surrogate, which UTF-8 cannot
    hold: that reject names no id, its raw line keeps the escape, and clean goes on."""
    write_input(project, [paper("0704.0001"), b'{"id": "0704.0002\\ud800", "title": 5, "abstract": "x", "categories": "hep-th"}',
                          b'{"id": 12345, "title": "An id written as a number", "abstract": "x", "categories": "hep-th"}'])
    papers, rejects, _ = run_clean(project)
    assert papers["id"].to_list() == ["0704.0001"]
    assert [(row["line"], row["reason"], row["id"]) for row in rejects] == [(2, "wrong_type", None), (3, "wrong_type", "12345")]
    assert "0704.0002\\ud800" in rejects[0]["raw"]


def test_bad_line_in_a_large_batch_keeps_its_neighbours(project: Path) -> None:
    good = [paper(f"0704.{i:04d}") for i in range(1, 200)]
    write_input(project, [*good[:120], paper("0704.9999", versions={"v1": "x"}), *good[120:]])
    papers, rejects, _ = run_clean(project)
    assert papers.height == 199 and reasons(rejects) == {121: "wrong_type"}


def test_a_batch_larger_than_the_sieve_finds_each_bad_line_and_keeps_the_rest_in_order() -> None:
    # Over FAN_OUT * SIEVE_LINES lines: the pieces holding a bad line are split again before sieving.
    n = records.FAN_OUT * records.SIEVE_LINES + 300
    lines = [json.dumps(paper(f"2401.{i:05d}")) for i in range(n)]
    lines[10] = '{"id": "cut off'  # not JSON
    lines[4000] = json.dumps(paper("2401.99999", versions="v1"))  # JSON, a field of the wrong type
    lines[4001] = ""  # blank: not a record
    lines[n - 1] = "[1, 2]"  # JSON, not a record
    lines[20] = f" {lines[20]}\r"  # a valid record that does not look like one at a glance: kept, in order
    frame, refused = records.parse_batch(("\n".join(lines) + "\n").encode(), first_line=101)
    assert reasons(refused) == {111: "malformed_json", 4101: "wrong_type", 100 + n: "malformed_json"}
    assert refused[0]["raw"] == '{"id": "cut off'
    expected = [101 + i for i in range(n) if i not in (10, 4000, 4001, n - 1)]
    assert frame["line"].to_list() == expected
    assert frame["id"].to_list() == [f"2401.{i - 101:05d}" for i in expected]


def test_a_byte_order_mark_opening_a_line_costs_no_record() -> None:
    # A file saved by a Windows tool starts with one; BOM files concatenated carry one at each start.
    lines = [json.dumps(paper(f"2401.{i:05d}")).encode() for i in range(4)]
    chunk = records.BOM + lines[0] + b"\n" + lines[1] + b"\n" + records.BOM + lines[2] + b"\n" + lines[3] + b"\n"
    frame, refused = records.parse_batch(chunk, first_line=1)
    assert refused == [] and frame["id"].to_list() == [f"2401.{i:05d}" for i in range(4)] and frame["line"].to_list() == [1, 2, 3, 4]


def test_a_lone_surrogate_escape_leaves_no_nul_in_the_text(project: Path) -> None:
    # Valid JSON that is no valid Unicode: polars reads "\ud800" as NUL, which would reach the model's input.
    line = json.dumps(paper("2401.00001")).replace("We study", "We \\ud800 study")
    write_input(project, [line, paper("2401.00002")])
    papers, _, _ = run_clean(project)
    assert papers.height == 2 and not papers["abstract"].str.contains("\x00", literal=True).any()
    assert papers["abstract"][0].startswith("We study paper 2401.00001")


def test_invisible_characters_go_so_a_copy_is_found_and_an_invisible_title_is_missing(project: Path) -> None:
    """A soft hyphen or zero-width space inside a word ("net\u00adworks") is no word break: deleted, the copy of an
    abstract is a duplicate of its original, and a title of nothing else is missing."""
    original = paper("2401.00001")
    copy = paper("2401.00002", title=original["title"].replace("theory", "the\u00adory"),
                 abstract=original["abstract"].replace("study", "stu\u00addy").replace("paper", "pa\u200bper\ufeff"))
    write_input(project, [original, copy, paper("2401.00003", title="\u200b"), paper("2401.00004")])
    papers, rejects, _ = run_clean(project)
    assert papers["id"].to_list() == ["2401.00001", "2401.00004"]
    assert sorted((row["id"], row["reason"]) for row in rejects) == [("2401.00002", "duplicate_text"), ("2401.00003", "missing_title")]


@pytest.mark.parametrize("keys_per_bucket", [dedup.KEYS_PER_BUCKET, 2], ids=["one-bucket", "3-buckets"])
def test_duplicate_ids_keep_the_latest(project: Path, monkeypatch: pytest.MonkeyPatch, keys_per_bucket: int) -> None:
    monkeypatch.setattr(records, "BATCH_BYTES", 1500)  # duplicates land in different batches
    monkeypatch.setattr(dedup, "KEYS_PER_BUCKET", keys_per_bucket)
    v1 = [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"}]
    v2 = [*v1, {"version": "v2", "created": "Tue, 24 Jul 2007 20:10:27 GMT"}]
    write_input(
        project,
        [
            paper("0704.0001", update_date="2009-01-01", title="Newest"),
            # Both updated the same day: more versions is newer, also where it comes first (the file's order is the last tie-break).
            paper("0704.0002", update_date="2008-01-01", versions=v2, title="More versions"),
            paper("0704.0001", update_date="2007-05-01", title="Older"),
            paper("0704.0002", update_date="2008-01-01", versions=v1, title="Fewer versions"),
            paper("0704.0003", update_date="2007-05-01"),
            paper("0704.0003", update_date="2010-01-01", abstract="This paper has been withdrawn by the author."),
        ],
    )
    papers, rejects, metrics = run_clean(project)
    assert dict(papers.select("id", "title").iter_rows()) == {"0704.0001": "Newest", "0704.0002": "More versions"}
    # The latest record of 0704.0003 is a withdrawal: the paper goes, not its older version.
    assert reasons(rejects) == {3: "duplicate_id", 4: "duplicate_id", 5: "duplicate_id", 6: "withdrawn"}
    assert metrics["rejected"]["duplicate_id"] == 3


def test_a_versioned_or_prefixed_id_is_the_same_paper(project: Path) -> None:
    """A JSON-lines file from elsewhere may name versions ("2101.00050v2", "arXiv:..."): one paper, kept once."""
    write_input(project, [paper("2101.00050v1", update_date="2021-01-05", title="First"),
                          paper("arXiv: 2101.00050v2", update_date="2021-03-01", title="Revised"),
                          paper("math/0601001v3"), paper("2101.00051")])
    papers, rejects, _ = run_clean(project)
    titles = dict(papers.select("id", "title").iter_rows())
    assert sorted(titles) == ["2101.00050", "2101.00051", "math/0601001"] and titles["2101.00050"] == "Revised"
    assert reasons(rejects) == {1: "duplicate_id"}


def test_rejects_are_in_input_order(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rejects file follows the input's lines: a batch's unparsable and unusable records, and the duplicates that
    de-duplication finds after the whole file is read, merged in."""
    monkeypatch.setattr(records, "BATCH_BYTES", 1500)  # several batches
    set_params(project, max_malformed_fraction=0.5)
    write_input(
        project,
        [
            paper("0704.0001", update_date="2009-01-01"),
            '{"id": "0704.0002", "title": "cut off',
            paper("0704.0001", update_date="2007-05-01"),
            paper("0704.0003", abstract=None),
            paper("0704.0004", update_date="2009-01-01"),
            paper("0704.0004", update_date="2007-05-01"),
            "[1, 2]",
            paper("0704.0005", abstract=None),
            paper("0704.0001", update_date="2008-01-01"),
        ],
    )
    _, rejects, metrics = run_clean(project)
    assert [(row["line"], row["reason"]) for row in rejects] == [
        (2, "malformed_json"), (3, "duplicate_id"), (4, "missing_abstract"), (6, "duplicate_id"), (7, "malformed_json"),
        (8, "missing_abstract"), (9, "duplicate_id")]
    assert metrics["rejected"]["duplicate_id"] == 3 and metrics["rejected_total"] == 7


@pytest.mark.parametrize("keys_per_bucket", [dedup.KEYS_PER_BUCKET, 1], ids=["one-bucket", "3-buckets"])
def test_duplicate_text_keeps_the_first_submitted(project: Path, monkeypatch: pytest.MonkeyPatch, keys_per_bucket: int) -> None:
    """The oldest first version keeps the text (an old-style id sorts after every new-style one: no tie-break by id);
    the smallest id breaks a tie of dates, or stands in for a missing date."""
    monkeypatch.setattr(dedup, "KEYS_PER_BUCKET", keys_per_bucket)
    text = "We prove a theorem " + " ".join(f"lemma{i}" for i in range(30))
    other = "We measure a spectrum " + " ".join(f"line{i}" for i in range(30))
    created = lambda date: [{"version": "v1", "created": date}]  # noqa: E731
    write_input(
        project,
        [
            paper("0705.0001", title="Same  title", abstract=text),
            paper("0704.0002", title="Same title", abstract=f"  {text.replace(' ', chr(10), 3)}\n"),
            paper("0704.0003", title="Other title", abstract=text),
            paper("1001.0001", title="A resubmission", abstract=other, versions=created("Fri, 1 Jan 2010 10:00:00 GMT")),
            paper("hep-th/9901001", title="A resubmission", abstract=other, versions=created("Fri, 1 Jan 1999 10:00:00 GMT")),
            paper("0801.0001", title="A resubmission", abstract=other, versions=[]),
        ],
    )
    papers, rejects, _ = run_clean(project)
    assert sorted(papers["id"]) == ["0704.0002", "0704.0003", "hep-th/9901001"]
    assert reasons(rejects) == {1: "duplicate_text", 4: "duplicate_text", 6: "duplicate_text"}


def test_withdrawn_stubs_and_word_limits(project: Path) -> None:
    set_params(project, min_abstract_words=10, max_abstract_words=40)
    write_input(
        project,
        [
            paper("0704.0001", abstract="This paper has been withdrawn by the authors due to a crucial error in equation 3."),
            paper("0704.0002", comments="This paper has been withdrawn"),
            paper("0704.0003", abstract="Too short to be an abstract."),
            paper("0704.0004", abstract=" ".join(["word"] * 41)),
            paper("0704.0005", abstract=" ".join(["word"] * 40)),
            paper("0704.0006", abstract="We discuss why papers are withdrawn from journals and what this does to citations."),
        ],
    )
    papers, rejects, _ = run_clean(project)
    assert papers["id"].to_list() == ["0704.0005", "0704.0006"]
    assert reasons(rejects) == {1: "withdrawn", 2: "withdrawn", 3: "abstract_too_short", 4: "abstract_too_long"}


def test_line_batches_reads_the_next_batch_while_the_caller_works_on_this_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decompressing the 4.5 GB snapshot overlaps parsing: the next batch is read as soon as one is handed out,
    and no further (two batches in memory)."""
    import threading

    read = [threading.Event() for _ in range(3)]

    def batches(path: Path, batch_bytes: int) -> Iterator[tuple[int, bytes]]:
        for number, event in enumerate(read, start=1):
            event.set()
            yield number, b"{}\n"

    monkeypatch.setattr(records, "_line_batches", batches)
    path = tmp_path / "arxiv.jsonl"
    path.write_text("{}\n")
    reading = records.line_batches(path)
    assert next(reading) == (1, b"{}\n")
    assert read[1].wait(10)  # read ahead while the caller holds batch 1
    time.sleep(0.1)
    assert not read[2].is_set()
    assert list(reading) == [(2, b"{}\n"), (3, b"{}\n")]


def test_line_batches_number_lines_across_batches_and_gzip_members(tmp_path: Path) -> None:
    lines = [json.dumps(paper(f"0704.{i:04d}")).encode() for i in range(1, 41)]
    lines[7] = b"  "
    path = tmp_path / "two-members.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines[:25]) + b"\n") + gzip.compress(b"\n".join(lines[25:])))
    batches = list(records.line_batches(path, batch_bytes=2000))
    assert len(batches) > 3
    numbered = [(first + i, line) for first, chunk in batches for i, line in enumerate(chunk.rstrip(b"\n").split(b"\n"))]
    assert numbered == list(enumerate(lines, start=1))
    frames = [records.parse_batch(chunk, first) for first, chunk in batches]
    assert [n for frame, bad in frames for n in frame["line"]] == [n for n in range(1, 41) if n != 8]
    assert not any(bad for _, bad in frames)


def test_a_line_longer_than_a_batch_is_read_whole_and_one_over_the_limit_is_named(tmp_path: Path, monkeypatch) -> None:
    long_line = json.dumps(paper("0704.0002", abstract="word " * 2000)).encode()  # ~10 KB: many 64-byte blocks
    lines = [json.dumps(paper("0704.0001")).encode(), long_line, json.dumps(paper("0704.0003")).encode()]
    path = tmp_path / "long.jsonl"  # plain: gzip's blocks of "word word..." would inflate to the whole line at once
    path.write_bytes(b"\n".join(lines) + b"\n")
    joins = []
    monkeypatch.setattr(records, "_join", lambda parts: joins.append(len(parts)) or b"".join(parts))
    batches = list(records.line_batches(path, batch_bytes=1024))
    assert [(first + i, line) for first, chunk in batches for i, line in enumerate(chunk.rstrip(b"\n").split(b"\n"))] == [
        (1, lines[0]), (2, long_line), (3, lines[2])]
    # The long line's ~160 blocks are joined once it ends, not again with every block (quadratic in its length).
    assert len(joins) <= 5 and max(joins) > 100, joins
    monkeypatch.setattr(records, "MAX_LINE_BYTES", 4096)
    with pytest.raises(InputError, match=r"long\.jsonl: line 2 is over \d+ MB long; this is not a JSON-lines file"):
        list(records.line_batches(path, batch_bytes=1024))


def test_plain_json_lines_without_gzip(project: Path) -> None:
    write_input(project, [paper("0704.0001"), paper("0704.0002")], gzipped=False)
    papers, _, _ = run_clean(project)
    assert papers.height == 2


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_input_fails_clearly(project: Path, content: bytes) -> None:
    (project / "data/raw").mkdir(parents=True)
    (project / "data/raw/arxiv.jsonl.gz").write_bytes(gzip.compress(content))
    with pytest.raises(UserError, match=r"^data/raw/arxiv.jsonl.gz holds no records"):  # the runner adds "clean: error: "
        clean.main()
    assert not (project / "data/clean/papers.parquet").exists()


def test_truncated_gzip_fails_clearly(project: Path) -> None:
    path = write_input(project, [paper(f"0704.{i:04d}") for i in range(1, 300)])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"arxiv.jsonl.gz is truncated or corrupt after line \d+ .*download") as error:
        clean.main()
    # The line named is the last whole one the cut file holds (one batch: the count is not left at the batch's start).
    whole_lines = zlib.decompressobj(wbits=31).decompress(path.read_bytes()).count(b"\n")
    assert whole_lines > 100 and f"after line {whole_lines} " in str(error.value)
    assert not (project / "data/clean/papers.parquet").exists()


def test_malformed_fraction_threshold(project: Path) -> None:
    write_input(project, [*(paper(f"0704.{i:04d}") for i in range(1, 10)), "not json at all"])
    set_params(project, max_malformed_fraction=0.05)
    with pytest.raises(UserError, match=r"1 of 10 lines of data/raw/arxiv.jsonl.gz .*clean.max_malformed_fraction=0.05; first at line 10;"):
        clean.main()
    set_params(project, max_malformed_fraction=0.1)
    papers, rejects, _ = run_clean(project)
    assert papers.height == 9 and reasons(rejects) == {10: "malformed_json"}


def test_nothing_usable_fails_clearly(project: Path) -> None:
    write_input(project, [paper("0704.0001", abstract="withdrawn by the author")])
    with pytest.raises(UserError, match="no paper .* survived"):
        clean.main()


def test_a_failed_clean_names_each_reason_s_first_line_and_keeps_the_rejects(project: Path) -> None:
    """Nothing usable: the error says why with line numbers, and the rejects file (each record's raw text) stays."""
    write_input(project, [paper("0704.0001", categories="cs.AI, cs.LG"), paper("0704.0002", categories="cs.AI, cs.LG"),
                          paper("0704.0003", id=None)])
    with pytest.raises(UserError) as failed:
        clean.main()
    assert ("invalid_categories: 2, first at line 1; missing_id: 1, first at line 3; every rejected record, its line and raw "
            "text: data/clean/rejects.jsonl") in str(failed.value)
    rejects = [json.loads(line) for line in (project / "data/clean/rejects.jsonl").read_text().splitlines()]
    assert [(row["line"], row["reason"]) for row in rejects] == [(1, "invalid_categories"), (2, "invalid_categories"), (3, "missing_id")]
    assert json.loads(rejects[0]["raw"])["categories"] == "cs.AI, cs.LG"
    assert not (project / "data/clean/papers.parquet").exists()


def test_a_failed_temporary_run_keeps_its_rejects_in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dvc exp run --temp` (or a queued run) cleans in a copy under <root>/.dvc/tmp/exps that DVC deletes when the stage
    fails: the rejects file the error points to is copied into the project first, and the error names the copy."""
    root = tmp_path / "repo"
    workspace = root / ".dvc/tmp/exps/tmp1a2b3c"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv("DVC_EXP_NAME", "bad-input")
    set_params(workspace)
    write_input(workspace, [paper("0704.0001", categories="cs.AI, cs.LG"), paper("0704.0002", id=None)])
    with pytest.raises(UserError) as failed:
        clean.main()
    kept = root / ".dvc/tmp/clean-rejects/bad-input.jsonl"
    assert f"every rejected record, its line and raw text: {kept}" in str(failed.value)
    rows = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [(row["line"], row["reason"]) for row in rows] == [(1, "invalid_categories"), (2, "missing_id")]


def test_an_empty_rejects_file_is_announced_as_meant(project: Path, capsys: pytest.CaptureFixture) -> None:
    """DVC warns that an empty output is empty: clean says first, on a clean input only, that it is meant to be."""
    write_input(project, [paper("0704.0001"), paper("0704.0002")])
    run_clean(project)
    assert "0 rejected -> data/clean/rejects.jsonl (empty: every record was usable" in capsys.readouterr().out
    write_input(project, [paper("0704.0001"), paper("0704.0002", id=None)])
    run_clean(project)
    assert "1 rejected -> data/clean/rejects.jsonl\n" in capsys.readouterr().out
