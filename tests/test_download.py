"""download: OAI-PMH harvests and the Kaggle URL against servers on 127.0.0.1, local files for real."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import re
import shutil
import socket
import struct
import threading
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from stages import download
from arxiv_embed.errors import UserError
from arxiv_embed.data.oai import harvest_oai, json_line
from arxiv_embed.data.http import DownloadError, NoNetworkError
from arxiv_embed.data.sources import open_records, stream_url_records

from .conftest import ROOT, deep_update

Response = tuple[int, dict[str, str], bytes]


class Server:
    """A threading HTTP server on 127.0.0.1 answering from scripts the test writes.

    A request is keyed by its resumptionToken, else its set, else its path; each key holds a list
    of responses served in turn (the last one repeats). Every request is logged.
    """

    def __init__(self) -> None:
        self.script: dict[str, list[Response]] = {}
        self.log: list[tuple[str, dict[str, str], dict[str, str]]] = []  # (key, query, headers)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                key = query.get("resumptionToken") or query.get("set") or url.path
                server.log.append((key, query, dict(self.headers)))
                responses = server.script.get(key, [(404, {}, b"not scripted")])
                status, headers, body = responses.pop(0) if len(responses) > 1 else responses[0]
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped early on purpose
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        return [key for key, _, _ in self.log]


@pytest.fixture
def servers() -> Iterator[Callable[[], Server]]:
    started: list[Server] = []

    def start() -> Server:
        started.append(Server())
        return started[-1]

    yield start
    for server in started:
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def server(servers: Callable[[], Server]) -> Server:
    return servers()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def oai_record(arxiv_id: str, categories: str = "cs.LG", deleted: bool = False, datestamp: str = "2026-10-03",
               title: str = "Private Retrieval over Scientific\n  Corpora") -> str:
    status = ' status="deleted"' if deleted else ""
    header = f"<header{status}><identifier>oai:arXiv.org:{arxiv_id}</identifier><datestamp>{datestamp}</datestamp></header>"
    if deleted:
        return f"<record>{header}</record>"
    return f"""<record>{header}<metadata><arXiv xmlns="http://arxiv.org/OAI/arXiv/">
<id>{arxiv_id}</id><created>2026-10-02</created><updated>{datestamp}</updated>
<authors><author><keyname>Lindqvist</keyname><forenames>Anna</forenames></author>
<author><keyname>Chen</keyname><forenames>Bo</forenames><suffix>Jr</suffix></author>
<author><keyname>LIGO Collaboration</keyname></author></authors>
<title>{title}</title><categories>{categories}</categories><comments>12 pages</comments>
<doi>10.1000/xyz</doi><license>http://creativecommons.org/licenses/by/4.0/</license>
<abstract>  We study retrieval under differential privacy &amp; report epsilon &lt; 1.
</abstract></arXiv></metadata></record>"""


def oai_page(records: list[str], token: str | None = None) -> Response:
    # arXiv ends a list with an empty resumptionToken element; a middle page carries the token.
    resumption = f"<resumptionToken cursor=\"0\">{token}</resumptionToken>" if token else "<resumptionToken cursor=\"2\"/>"
    body = f"""<?xml version="1.0" encoding="UTF-8"?>
<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/"><responseDate>2026-11-01T00:00:00Z</responseDate>
<request verb="ListRecords">x</request><ListRecords>{''.join(records)}{resumption}</ListRecords></OAI-PMH>"""
    return 200, {"Content-Type": "text/xml"}, body.encode()


def oai_error(code: str) -> Response:
    body = f"""<?xml version="1.0" encoding="UTF-8"?><OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">
<error code="{code}">explained</error></OAI-PMH>"""
    return 200, {"Content-Type": "text/xml"}, body.encode()


def sample_lines(path: Path, n: int | None = None) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return list(itertools.islice(f, n))


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# ---------------------------------------------------------------- OAI-PMH

def test_harvest_follows_tokens_retries_503_converts_and_paces(server: Server, kaggle_sample: Path):
    server.script = {
        "cs": [oai_page([oai_record("2610.00001", "cs.IR  cs.CR"), oai_record("2610.00002", deleted=True)], "tok1")],
        "tok1": [(503, {"Retry-After": "0"}, b"busy"), oai_page([oai_record("2610.00003")])],
        "stat": [oai_error("noRecordsMatch")],  # an empty set is not an error
    }
    sleeps: list[float] = []
    records = list(harvest_oai(f"{server.url}/oai", ["cs", "stat"], "2026-10-01", "2026-10-07",
                               request_interval_s=3.0, max_retries=2, sleep=sleeps.append))

    assert [r["id"] for r in records] == ["2610.00001", "2610.00003"]  # deleted record skipped
    assert server.keys() == ["cs", "tok1", "tok1", "stat"]
    assert server.log[0][1] == {"verb": "ListRecords", "metadataPrefix": "arXiv", "set": "cs",
                                "from": "2026-10-01", "until": "2026-10-07"}
    assert server.log[1][1] == {"verb": "ListRecords", "resumptionToken": "tok1"}
    assert server.log[0][2]["User-Agent"].startswith("arxiv-embed/")
    # 3 s between requests, Retry-After's 0 s after the 503, nothing before the first request.
    assert [round(s) for s in sleeps] == [0, 3, 0, 3, 3]

    first = records[0]
    kaggle_keys = list(json.loads(sample_lines(kaggle_sample, 1)[0]))
    assert list(json.loads(json_line(first))) == kaggle_keys
    assert first["authors"] == "Anna Lindqvist, Bo Chen Jr and LIGO Collaboration"
    assert first["authors_parsed"] == [["Lindqvist", "Anna", ""], ["Chen", "Bo", "Jr"], ["LIGO Collaboration", "", ""]]
    assert first["title"] == "Private Retrieval over Scientific\n  Corpora"  # raw, as in the snapshot
    assert first["abstract"].startswith("  We study retrieval under differential privacy & report epsilon < 1.")
    assert first["categories"] == "cs.IR cs.CR"
    assert first["versions"] == [{"version": "v1", "created": "Fri, 2 Oct 2026 00:00:00 GMT"}]
    assert first["update_date"] == "2026-10-03"
    assert (first["doi"], first["comments"], first["journal-ref"], first["submitter"]) == ("10.1000/xyz", "12 pages", None, None)


def test_max_records_is_spread_over_sets_and_stops_requests(server: Server):
    server.script = {
        "cs": [oai_page([oai_record(f"2610.0000{i}") for i in range(3)], "cs-page-2")],
        "q-bio": [oai_page([oai_record("2610.00100", "q-bio.NC")])],
        "math": [oai_page([oai_record("2610.00001")] + [oai_record(f"2610.0020{i}", "math.CO") for i in range(5)], "m2")],
    }
    records = list(harvest_oai(f"{server.url}/oai", ["cs", "q-bio", "math"], max_records=6, request_interval_s=0))

    # cs: its share ceil(6/3)=2, then no request for page 2; q-bio has 1 of its 2; math fills up to 6,
    # skipping the paper it shares with cs.
    assert [r["id"] for r in records] == ["2610.00000", "2610.00001", "2610.00100", "2610.00200", "2610.00201", "2610.00202"]
    assert server.keys() == ["cs", "q-bio", "math"]


def test_a_newer_copy_of_a_paper_read_before_goes_on_and_every_skipped_record_is_counted(server: Server, tmp_path: Path, capsys):
    """A paper updated during a harvest, or cross-listed in a later set, comes again: its latest version must
    reach clean (which keeps an id's latest record), also when the older copy came from a stopped run's pages."""
    headerless = re.sub(r"<header>.*?</header>", "", oai_record("2610.00009", datestamp="2026-10-04"))
    server.script = {
        "cs": [oai_page([oai_record("2610.00001", title="Old"), oai_record("2610.00002", deleted=True)], "cs-2")],
        "cs-2": [oai_page([oai_record("2610.00001", datestamp="2026-10-05", title="New"), oai_record("2610.00003"),
                           headerless])],
        "math": [(404, {}, b"down")],
    }
    harvest = lambda: list(harvest_oai(f"{server.url}/oai", ["cs", "math"], request_interval_s=0, max_retries=0,  # noqa: E731
                                       pages=tmp_path / "pages"))
    with pytest.raises(DownloadError):
        harvest()
    capsys.readouterr()
    server.script = {"math": [oai_page([oai_record("2610.00003", "math.CO", datestamp="2026-10-06", title="Revised"),
                                        oai_record("2610.00001", "math.CO", datestamp="2026-10-05")])]}
    records = harvest()

    assert [(r["id"], r["update_date"], r["title"]) for r in records] == [
        ("2610.00001", "2026-10-03", "Old"), ("2610.00001", "2026-10-05", "New"), ("2610.00003", "2026-10-03", records[2]["title"]),
        ("2610.00009", "2026-10-04", records[3]["title"]),  # no header: dated by its metadata
        ("2610.00003", "2026-10-06", "Revised")]  # newer than the saved copy
    out = capsys.readouterr().out
    assert "OAI set cs: 4 records (of them newer copies of papers read before: 1; deleted records, skipped: 1)" in out
    assert ("OAI set math: 1 records (of them newer copies of papers read before: 1; copies no newer than one read before, "
            "skipped: 1)") in out


def test_a_stopped_harvest_resumes_from_its_saved_pages(server: Server, tmp_path: Path):
    """A failure after the retries (or Ctrl-C) hours into a harvest must not cost the pages already answered."""
    pages = [oai_page([oai_record(f"2610.0010{i}")], f"t{i + 1}" if i < 3 else None) for i in range(4)]
    server.script = {"cs": [pages[0]], "t1": [pages[1]], "t2": [pages[2]], "t3": [(404, {}, b"gone")]}
    harvest = lambda: list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=0, pages=tmp_path / "pages"))  # noqa: E731
    with pytest.raises(DownloadError, match="HTTP 404"):
        harvest()
    server.script["t3"] = [pages[3]]
    server.log.clear()
    assert [r["id"] for r in harvest()] == [f"2610.0010{i}" for i in range(4)]  # in order, once each
    assert server.keys() == ["t3"]  # the three answered pages were read from disk
    assert [r["id"] for r in harvest()] == [f"2610.0010{i}" for i in range(4)] and server.keys() == ["t3"]


def test_a_saved_token_the_server_dropped_asks_the_set_again(server: Server, tmp_path: Path):
    first = oai_page([oai_record("2610.00201"), oai_record("2610.00202")], "old")
    server.script = {"cs": [first], "old": [(404, {}, b"down")], "math": [oai_page([oai_record("2610.00300")])]}
    harvest = lambda: list(harvest_oai(f"{server.url}/oai", ["cs", "math"], request_interval_s=0, max_retries=0, pages=tmp_path / "pages"))  # noqa: E731
    with pytest.raises(DownloadError, match="HTTP 404"):
        harvest()
    # Days later: the token is gone, the set has a new paper.
    server.script = {"old": [oai_error("badResumptionToken")], "math": server.script["math"],
                     "cs": [oai_page([oai_record("2610.00201"), oai_record("2610.00202")], "new")],
                     "new": [oai_page([oai_record("2610.00203")])]}
    server.log.clear()
    assert [r["id"] for r in harvest()] == ["2610.00201", "2610.00202", "2610.00203", "2610.00300"]
    assert server.keys() == ["old", "cs", "new", "math"]


def test_a_restarted_set_does_not_repeat_records_without_an_id(server: Server, tmp_path: Path):
    """clean counts them (missing_id): a restart after an expired token must not count one twice."""
    without_id = oai_record("2610.00209").replace("<id>2610.00209</id>", "")
    server.script = {"cs": [oai_page([oai_record("2610.00201"), without_id], "old")], "old": [(404, {}, b"down")]}
    harvest = lambda: list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=0, pages=tmp_path / "pages"))  # noqa: E731
    with pytest.raises(DownloadError, match="HTTP 404"):
        harvest()
    server.script = {"old": [oai_error("badResumptionToken")], "cs": [oai_page([oai_record("2610.00201"), without_id], "new")],
                     "new": [oai_page([oai_record("2610.00203"), without_id])]}
    assert [r["id"] for r in harvest()] == ["2610.00201", None, "2610.00203", None]


def test_records_without_an_id_all_go_on_to_clean(server: Server):
    """clean counts and keeps aside each one (missing_id); none may vanish as a 'repeat' of another."""
    without_id = [oai_record(f"2610.0030{i}").replace(f"<id>2610.0030{i}</id>", "") for i in range(3)]
    server.script = {"cs": [oai_page([oai_record("2610.00001"), *without_id[:2]])],
                     "math": [oai_page([oai_record("2610.00001"), without_id[2], oai_record("2610.00002")])]}
    records = list(harvest_oai(f"{server.url}/oai", ["cs", "math"], max_records=10, request_interval_s=0))
    assert [r["id"] for r in records] == ["2610.00001", None, None, None, "2610.00002"]


@pytest.mark.parametrize(
    ("responses", "message"),
    [([(503, {"Retry-After": "0"}, b"busy")], "HTTP 503"), ([oai_error("badArgument")], "badArgument for set 'cs'")],
)
def test_oai_failures_are_bounded_and_explained(server: Server, responses: list[Response], message: str):
    server.script = {"cs": responses}
    with pytest.raises(DownloadError, match=message) as excinfo:
        list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2))
    assert "download.oai" in str(excinfo.value)
    assert len(server.log) == (3 if "503" in message else 1)  # 1 try + max_retries


def test_a_broken_off_answer_is_retried_a_repeated_token_refused_and_a_nan_retry_after_ignored(server: Server):
    page = oai_page([oai_record("2610.00001")], "cs-2")
    cut = (200, {"Content-Type": "text/xml", "Content-Length": str(len(page[2]))}, page[2][:120])  # the body stops short
    waits: list[float] = []
    server.script = {"cs": [cut, page], "cs-2": [(503, {"Retry-After": "nan"}, b"busy"), oai_page([oai_record("2610.00002")])]}
    records = list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))
    assert [r["id"] for r in records] == ["2610.00001", "2610.00002"] and server.keys() == ["cs", "cs", "cs-2", "cs-2"]
    assert [w for w in waits if w] == [10.0, 10.0]  # backoff after the cut; nan is no wait: the default instead
    # A server that hands back the same token would keep the harvest going for ever (max_records cannot stop it).
    server.script = {"cs": [page], "cs-2": [oai_page([], "cs-2")]}
    with pytest.raises(DownloadError, match="sent resumptionToken 'cs-2' twice for set 'cs'"):
        list(harvest_oai(f"{server.url}/oai", ["cs"], max_records=5, request_interval_s=0, sleep=waits.append))
    server.script = {"cs": [cut]}
    with pytest.raises(DownloadError, match=r"the answer broke off \(IncompleteRead.*after 2 retries"):
        list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))


def test_xml_cut_short_or_empty_is_asked_again_and_a_web_page_fails_at_once(server: Server):
    """A connection closed mid-answer with no Content-Length to check reaches the parser as a piece of XML."""
    page = oai_page([oai_record("2610.00001")])
    waits: list[float] = []
    server.script = {"cs": [(200, {}, page[2][:150]), (200, {}, b""), page]}
    records = list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))
    assert [r["id"] for r in records] == ["2610.00001"] and server.keys() == ["cs"] * 3
    assert [w for w in waits if w] == [10.0, 20.0]

    server.log.clear()
    server.script = {"cs": [(200, {"Content-Type": "text/html"}, b"<!DOCTYPE html><html><body>Not here</body></html")]}
    with pytest.raises(DownloadError, match="not OAI-PMH XML .*check download.oai.endpoint"):
        list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))
    assert server.keys() == ["cs"]  # no endpoint at all: said at once, not after minutes of retries
    server.script = {"cs": [(200, {}, page[2][:150])]}
    with pytest.raises(DownloadError, match="not OAI-PMH XML .*check download.oai.endpoint"):
        list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))


def test_a_control_character_in_a_record_is_replaced_and_a_whole_broken_page_fails_at_once(server: Server, capsys):
    """One form feed in one abstract made expat refuse the page: retried for minutes, then blamed on the endpoint."""
    waits: list[float] = []
    raw = oai_record("2610.00001").replace("<title>Private", "<title>Private\x0c")
    referenced = oai_record("2610.00002").replace("<title>Private", "<title>Private&#x0C;&#27;")
    server.script = {"cs": [oai_page([raw, referenced, oai_record("2610.00003")])]}
    records = list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))
    assert [r["id"] for r in records] == ["2610.00001", "2610.00002", "2610.00003"] and server.keys() == ["cs"]
    assert [r["title"].split()[:2] for r in records[:2]] == [["Private", "Retrieval"]] * 2 and not any(waits)
    assert "3 control character(s) XML forbids replaced by spaces" in capsys.readouterr().out

    whole_but_broken = oai_page([oai_record("2610.00001").replace("Private", "Private &nbsp;")])
    server.script = {"cs": [whole_but_broken]}
    with pytest.raises(DownloadError, match=r"whole but not well-formed XML \(undefined entity.*report it") as broken:
        list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))
    assert "download.oai.endpoint" not in str(broken.value) and server.keys() == ["cs"] * 2 and not any(waits)


def test_an_empty_window_is_not_saved_so_a_rerun_asks_again(server: Server, tmp_path: Path):
    """A window with nothing yet (noRecordsMatch) must not stay empty on disk once arXiv announces its papers."""
    server.script = {"cs": [oai_error("noRecordsMatch")]}
    harvest = lambda: list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, pages=tmp_path / "pages"))  # noqa: E731
    assert harvest() == []
    server.script = {"cs": [oai_page([oai_record("2610.00001")])]}
    assert [r["id"] for r in harvest()] == ["2610.00001"] and server.keys() == ["cs", "cs"]


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo", "UTC"])
def test_retry_after_as_an_http_date_is_gmt_whatever_the_local_zone(zone: str, monkeypatch: pytest.MonkeyPatch):
    import time

    from arxiv_embed.data.oai import _retry_after

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        later = time.gmtime(time.time() + 100)
        for form in ("%a %b %d %H:%M:%S %Y", "%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT"):  # asctime, RFC 1123, 850
            assert _retry_after(time.strftime(form, later), default=1.0) == pytest.approx(100, abs=3), form
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_tls_stream_that_breaks_off_is_retried(server: Server, monkeypatch: pytest.MonkeyPatch):
    """The default endpoint is https: a server closing TLS mid-answer raises ssl.SSLEOFError from read(), which is no
    ConnectionError; one such break must not end an hours-long harvest."""
    import ssl

    from arxiv_embed.data import oai

    server.script = {"cs": [oai_page([oai_record("2610.00001")])]}
    real_open, breaks = oai.open_url, iter([True])

    class BreaksOff:
        def __init__(self, response):
            self.response = response

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.response.close()

        def read(self):
            raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol")

    def open_url(request, timeout_s):
        response = real_open(request, timeout_s)
        return BreaksOff(response) if next(breaks, False) else response

    monkeypatch.setattr(oai, "open_url", open_url)
    waits: list[float] = []
    records = list(harvest_oai(f"{server.url}/oai", ["cs"], request_interval_s=0, max_retries=2, sleep=waits.append))
    assert [r["id"] for r in records] == ["2610.00001"] and [w for w in waits if w] == [10.0]


def test_an_endpoint_with_a_query_keeps_it_and_messages_hide_it(server: Server):
    """An endpoint may carry an access token in its query: requests add their own parameters to it (one `?`), and no
    message prints it."""
    server.script = {"cs": [oai_page([oai_record("2610.00001")])], "math": [(404, {}, b"no such set")]}
    records = list(harvest_oai(f"{server.url}/oai?apikey=TOPSECRET", ["cs"], request_interval_s=0))
    [(_, query, _)] = server.log
    assert [r["id"] for r in records] == ["2610.00001"] and query["apikey"] == "TOPSECRET" and query["verb"] == "ListRecords"
    with pytest.raises(DownloadError, match="HTTP 404") as failed:
        list(harvest_oai(f"{server.url}/oai?apikey=TOPSECRET", ["math"], request_interval_s=0))
    assert "TOPSECRET" not in str(failed.value) and "set=math" in str(failed.value)


def test_an_empty_set_spec_is_sent_not_left_out(monkeypatch: pytest.MonkeyPatch):
    """Left out, an empty set would harvest all of arXiv in the window; sent, the server refuses it."""
    import xml.etree.ElementTree as ET

    from arxiv_embed.data import oai

    queries: list[dict[str, str]] = []
    monkeypatch.setattr(oai._OaiClient, "get", lambda self, query: queries.append(query) or ET.fromstring(oai_error("badArgument")[2]))
    with pytest.raises(DownloadError, match="badArgument for set ''"):
        list(harvest_oai("http://127.0.0.1:9/oai", [""], request_interval_s=0))
    assert queries == [{"verb": "ListRecords", "metadataPrefix": "arXiv", "set": ""}]


def test_unreachable_host_says_no_network_and_how_to_use_a_file(closed_port: int):
    url = f"http://127.0.0.1:{closed_port}/oai"
    for reader in (lambda: harvest_oai(url, ["cs"], request_interval_s=0, timeout_s=5), lambda: stream_url_records(url, 5)):
        with pytest.raises(NoNetworkError, match="no network") as excinfo:
            list(reader())
        assert "dvc exp run -S download.source=file -S download.path=" in str(excinfo.value)


# ---------------------------------------------------------------- Kaggle: URL and zip

def test_kaggle_url_streams_the_zip_member(server: Server, kaggle_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from arxiv_embed.data import sources

    # Reads smaller than the zip's directory: the member's end and the file's fall in different reads (at 1 MB, 2 in
    # 10,000 snapshot files), and the bytes after the member still arrive before the Content-Length check.
    monkeypatch.setattr(sources, "CHUNK", 64)
    lines = sample_lines(kaggle_sample, 40)
    archive = make_zip(tmp_path / "arxiv.zip", {"arxiv-metadata-oai-snapshot.json": b"".join(lines)})
    server.script = {"/dl": [(200, {"Content-Type": "application/zip"}, archive.read_bytes())],
                     "/gz": [(200, {}, gzip.compress(b"".join(lines)))],
                     "/private": [(403, {}, b"forbidden")],
                     "/evil": [(200, {}, make_zip(tmp_path / "evil.zip", {"../evil.json": lines[0]}).read_bytes())]}

    assert list(stream_url_records(f"{server.url}/dl", 5)) == lines
    assert list(itertools.islice(stream_url_records(f"{server.url}/dl", 5), 7)) == lines[:7]
    assert list(stream_url_records(f"{server.url}/gz", 5)) == lines
    with pytest.raises(DownloadError, match="HTTP 403.*KAGGLE_USERNAME.*download.path"):
        list(stream_url_records(f"{server.url}/private", 5))
    with pytest.raises(DownloadError, match=r"first member '\.\./evil\.json' .* safe name"):
        list(stream_url_records(f"{server.url}/evil", 5))


class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes each member's CRC in a data descriptor after its data."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:  # type: ignore[override]
        self.data += chunk
        return len(chunk)


def _inflating_corruption(archive: bytes, name: str) -> bytes:
    """`archive` with one byte of `name`'s deflated data changed such that it still inflates (to other bytes)."""
    start = archive.index(name.encode()) + len(name) + 64  # past the local header, into the deflate stream
    for position in range(start, len(archive)):
        corrupt = bytearray(archive)
        corrupt[position] ^= 0x01
        try:
            inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            inflate.decompress(bytes(corrupt[archive.index(name.encode()) + len(name):]))
        except zlib.error:
            continue
        if inflate.eof:
            return bytes(corrupt)
    raise AssertionError("no single-byte change inflates")


@pytest.mark.parametrize("descriptor", [False, True], ids=["crc-in-header", "crc-in-data-descriptor"])
def test_a_zip_streamed_from_a_url_is_checked_against_its_crc(server: Server, kaggle_sample: Path, descriptor: bool):
    """A changed byte can still inflate: the member's CRC-32 catches it, as zipfile does for a local zip."""
    from arxiv_embed.data import sources

    lines = sample_lines(kaggle_sample, 40)
    buffer = _Unseekable() if descriptor else io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(sources.KAGGLE_MEMBER, b"".join(lines))
    good = bytes(buffer.data if descriptor else buffer.getvalue())
    assert bool(struct.unpack("<H", good[6:8])[0] & 0x08) == descriptor
    server.script = {"/good": [(200, {}, good)], "/corrupt": [(200, {}, _inflating_corruption(good, sources.KAGGLE_MEMBER))]}

    assert list(stream_url_records(f"{server.url}/good", 5)) == lines
    with pytest.raises(DownloadError, match=r"/corrupt: truncated or corrupt after \d+ records \(Bad CRC-32"):
        list(stream_url_records(f"{server.url}/corrupt", 5))


def test_a_url_body_cut_short_is_an_error_and_no_url_secret_is_printed(server: Server, kaggle_sample: Path, capsys):
    from arxiv_embed.errors import redact_url

    body = b"".join(sample_lines(kaggle_sample, 40))
    server.script = {"/snapshot.jsonl": [(200, {"Content-Length": str(len(body))}, body[: len(body) // 2])]}
    url = f"{server.url}/snapshot.jsonl?token=SECRET123"
    with pytest.raises(DownloadError, match=r"snapshot.jsonl\?...: the download ended [\d,]+ bytes short of its Content-Length") as cut:
        list(stream_url_records(url, 5))
    assert "SECRET123" not in str(cut.value)
    assert redact_url("https://alice:KEY@www.kaggle.com:8443/api/v1/x?sig=abc") == "https://www.kaggle.com:8443/api/v1/x?..."
    assert redact_url("http://alice:KEY@[::1]:8080/oai?token=abc") == "http://[::1]:8080/oai?..."


@pytest.mark.parametrize(("cut_at", "message"), [(0.0, "the download broke off"), (0.9, r"reading failed after [1-9]\d* records")])
def test_a_chunked_body_cut_off_is_an_error_not_a_traceback(kaggle_sample: Path, cut_at: float, message: str):
    """A mirror or proxy that streams chunked and drops the connection: http.client raises IncompleteRead."""
    from arxiv_embed.data.sources import CHUNK

    lines = sample_lines(kaggle_sample, 40)
    body = b"".join(lines * (3 * CHUNK // len(b"".join(lines)) + 1))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            sent = body[: int(len(body) * cut_at)]
            connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + f"{len(body):x}\r\n".encode() + sent)  # one chunk, promised whole, then the connection ends

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(DownloadError, match=rf"snapshot.jsonl: {message} \(IncompleteRead"):
        list(stream_url_records(f"http://127.0.0.1:{listener.getsockname()[1]}/snapshot.jsonl", None))
    listener.close()


def test_kaggle_credentials_go_to_kaggle_only_and_never_follow_a_redirect(servers, kaggle_sample: Path, monkeypatch: pytest.MonkeyPatch):
    from arxiv_embed.data import sources

    kaggle, storage = servers(), servers()
    kaggle.script = {"/dl": [(302, {"Location": f"{storage.url}/blob"}, b"")] * 2}
    storage.script = {"/blob": [(200, {}, b"".join(sample_lines(kaggle_sample, 3)))] * 2}
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")

    # download.kaggle_url pointed at a mirror (a plain-http one here): the key stays home.
    assert len(list(stream_url_records(f"{kaggle.url}/dl", 5))) == 3
    assert "Authorization" not in kaggle.log[0][2] and "Authorization" not in storage.log[0][2]
    assert sources.sends_kaggle_key("https://www.kaggle.com/api/v1/datasets/download/Cornell-University/arxiv")
    assert not any(map(sources.sends_kaggle_key, ["http://www.kaggle.com/api/v1/x", "https://kaggle.com.evil.example/x",
                                                  "https://mirror.example/arxiv.zip", "https://www.kaggle.com@evil.example/x"]))

    # Kaggle itself (this server standing in for it): the key goes there, never to the storage it redirects to.
    monkeypatch.setattr(sources, "sends_kaggle_key", lambda url: url.startswith(kaggle.url))
    assert len(list(stream_url_records(f"{kaggle.url}/dl", 5))) == 3
    assert kaggle.log[1][2]["Authorization"].startswith("Basic ")
    assert "Authorization" not in storage.log[1][2]


def test_local_zip_is_streamed_and_unsafe_or_wrong_zips_are_refused(kaggle_sample: Path, tmp_path: Path):
    lines = sample_lines(kaggle_sample, 30)
    good = make_zip(tmp_path / "arxiv.zip", {"readme.txt": b"hi", "arxiv-metadata-oai-snapshot.json": b"".join(lines)})
    assert list(open_records(good)) == lines
    # macOS "Compress" adds a resource-fork entry beside each file: a user's own file is still the one member.
    mac = make_zip(tmp_path / "mine.zip", {"mine.jsonl": b"".join(lines), "__MACOSX/._mine.jsonl": b"\x00\x05\x16\x07"})
    assert list(open_records(mac)) == lines

    (tmp_path / "inside").mkdir()
    evil = make_zip(tmp_path / "inside" / "evil.zip", {"../evil.json": b'{"id": "x"}\n', "arxiv.json": b"".join(lines)})
    with pytest.raises(DownloadError, match=r"evil\.zip: refusing .*'\.\./evil\.json'"):
        list(open_records(evil))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["arxiv.zip", "evil.zip", "inside", "mine.zip"]  # nothing extracted

    no_json = make_zip(tmp_path / "other.zip", {"data.csv": b"a,b\n"})
    with pytest.raises(DownloadError, match=r"other\.zip: expected one \.json member.*download\.path"):
        list(open_records(no_json))

    # Windows' own zip stores large files with Deflate64 (method 9), which zipfile cannot inflate; encrypted members
    # need a password: each is one message saying to unzip it, not a traceback.
    for name, offset, patch in (("deflate64.zip", 10, b"\x09\x00"), ("encrypted.zip", 8, b"\x01\x00")):
        data = bytearray(good.read_bytes())
        entry = data.rindex(b"PK\x01\x02")  # the central directory entry of the last member written: the JSON one
        data[entry + offset:entry + offset + 2] = patch  # compression method, or the general-purpose flags
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DownloadError, match=rf"{name}: zipfile cannot read this zip .*unzip it with another tool"):
            list(open_records(tmp_path / name))


# ---------------------------------------------------------------- local files

def test_file_source_passes_the_first_lines_through_verbatim(kaggle_sample: Path, tmp_path: Path):
    out = tmp_path / "raw" / "arxiv.jsonl.gz"
    assert download.write_raw(open_records(kaggle_sample), out, 50, "file") == 50
    assert sample_lines(out) == sample_lines(kaggle_sample, 50)

    # Reading stops at the cap: a snapshot cut off further on still gives its first 50 records.
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(kaggle_sample.read_bytes()[:200_000])
    assert download.write_raw(open_records(cut), out, 50, "file") == 50


def test_malformed_lines_reach_clean_untouched(tmp_path: Path):
    """download only counts lines: clean parses them and counts the bad ones in its rejects."""
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b'{"id": "0704.0001", "title": " T "}  \n\n{"id": "broken"\n  {"id": "last"}')
    out = tmp_path / "raw.jsonl.gz"
    assert download.write_raw(open_records(source), out, None, "file") == 3  # the blank line is no record
    assert sample_lines(out) == [b'{"id": "0704.0001", "title": " T "}  \n', b'{"id": "broken"\n', b'  {"id": "last"}\n']


def test_a_line_over_the_limit_is_refused_before_it_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A .json holding the snapshot as one JSON array: a clear error naming the file and line, not an out-of-memory."""
    from arxiv_embed.data import sources

    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 1000)
    source = tmp_path / "snapshot.json"
    records = [{"id": f"0704.{i:04d}", "title": "T" * 50} for i in range(40)]
    source.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records) + "\n")
    reads: list[int] = []
    real_open = Path.open

    def counting_open(path: Path, *args: object, **kwargs: object):  # how much of the long line is ever read
        stream = real_open(path, *args, **kwargs)
        readline = stream.readline
        stream.readline = lambda limit=-1: reads.append(len(line := readline(limit))) or line  # type: ignore[method-assign]
        return stream

    monkeypatch.setattr(Path, "open", counting_open)
    lines = open_records(source)
    assert next(lines) == json.dumps(records[0]).encode() + b"\n"  # lines under the limit pass as before
    with pytest.raises(DownloadError, match=r"snapshot\.json: line 3 \(after 1 records\) is over .*not JSON lines.*jq -c"):
        next(lines)
    assert max(reads) == 1001 < len(json.dumps(records))


def test_bad_local_files_name_the_file_and_leave_no_output(kaggle_sample: Path, tmp_path: Path):
    out = tmp_path / "raw" / "arxiv.jsonl.gz"
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(kaggle_sample.read_bytes()[:200_000])
    with pytest.raises(DownloadError, match=r"cut\.jsonl\.gz: truncated or corrupt after \d+ records"):
        download.write_raw(open_records(cut), out, None, "file")

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n")
    with pytest.raises(DownloadError, match=r"file .*empty\.jsonl: no records"):
        download.write_raw(open_records(empty), out, None, f"file {empty}")

    with pytest.raises(DownloadError, match=r"missing\.jsonl: no such file \(download\.path\)"):
        list(open_records(tmp_path / "missing.jsonl"))
    assert not out.exists() and list(out.parent.iterdir()) == []  # atomic: no half-written file


def test_a_relative_path_missing_in_a_temp_workspace_is_read_from_the_project(kaggle_sample: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    """`dvc exp run --temp -S download.path=mydata.jsonl`: the copy DVC runs in holds git's files only, so the user's
    untracked file is the project's; a path missing there too is named in full."""
    from arxiv_embed.paths import user_path

    project = tmp_path / "project"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmp-point"
    workspace.mkdir(parents=True)
    shutil.copy(kaggle_sample, project / "mydata.jsonl.gz")
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert user_path("mydata.jsonl.gz") == project / "mydata.jsonl.gz" and next(open_records(user_path("mydata.jsonl.gz")))
    (workspace / "mydata.jsonl.gz").write_bytes(b"")  # tracked by git: the workspace's own copy comes first
    assert user_path("mydata.jsonl.gz") == Path("mydata.jsonl.gz")
    with pytest.raises(DownloadError, match=rf"{project / 'missing.jsonl'}: no such file"):
        next(open_records(user_path("missing.jsonl")))
    # So is a local base model's folder (model.base: ./my-base), which no Hub lookup must be tried for.
    from arxiv_embed.models import resolve_model

    (project / "my-base").mkdir()
    (project / "my-base" / "modules.json").write_text("[]")
    assert resolve_model("./my-base") == (project / "my-base").resolve()


# ---------------------------------------------------------------- the stage

def write_params(directory: Path, download_params: dict) -> None:
    raw = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), {"download": download_params})
    (directory / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("workspace", ["project", "dvc temporary copies"])
def test_main_harvests_oai_into_the_raw_file(server: Server, tmp_path: Path, monkeypatch, capsys, workspace: str):
    """A stopped harvest resumes from the pages it saved, also when each try runs in a temporary copy of the project
    that DVC deletes (`dvc exp run --temp`, a queued run): the pages live in the project's own root."""
    server.script = {s: [oai_page([oai_record(f"2610.{i}{j:04d}") for j in range(4)])] for i, s in enumerate(["cs", "math"])}
    pages = tmp_path / "data/raw/oai-pages"

    def attempt(name: str) -> Path:
        folder = tmp_path if workspace == "project" else tmp_path / ".dvc/tmp/exps" / name
        folder.mkdir(parents=True, exist_ok=True)
        write_params(folder, {"source": "oai", "max_records": 5,
                              "oai": {"endpoint": f"{server.url}/oai", "sets": ["cs", "math"], "request_interval_s": 0.0}})
        monkeypatch.chdir(folder)
        return folder

    monkeypatch.delenv("DVC_ROOT", raising=False)
    if workspace != "project":
        monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what DVC sets for a stage in its temporary copy
    first = attempt("tmp-first")
    math = server.script["math"]
    server.script["math"] = [(404, {}, b"down")]
    with pytest.raises(DownloadError):  # the cs set is answered and saved, math fails: no raw file
        download.main()
    assert not (first / "data/raw/arxiv.jsonl.gz").exists() and list(pages.rglob("page-*.json.gz"))
    if first != tmp_path:
        shutil.rmtree(first)  # DVC deletes a failed experiment's copy
    server.script["math"], server.log[:] = math, []
    second = attempt("tmp-second")
    download.main()

    assert server.keys() == ["math"]  # cs from its saved page
    records = [json.loads(line) for line in sample_lines(second / "data/raw/arxiv.jsonl.gz")]
    assert [r["id"] for r in records] == ["2610.00000", "2610.00001", "2610.00002", "2610.10000", "2610.10001"]
    out = capsys.readouterr().out
    assert "download: wrote 5 records from oai" in out and "stopped harvest" not in out
    assert "download: OAI set math: 2 records" in out  # the harvest caps itself: the last set's count is said too
    assert not pages.exists()  # written: the pages are deleted

    # Another window's stopped harvest (perhaps running in a queued experiment) is named, not deleted.
    other = pages / "0123456789abcdef" / "000-cs" / "page-000000.json.gz"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x" * 2048)
    download.main()
    assert other.exists() and f"{pages} still holds 1 stopped harvest(s)" in capsys.readouterr().out


def test_main_without_network_exits_with_the_offline_recipe(closed_port: int, tmp_path: Path, monkeypatch):
    write_params(tmp_path, {"source": "kaggle", "path": None, "kaggle_url": f"http://127.0.0.1:{closed_port}/dl"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="(?s)no network.*download.source=file"):
        download.main()
    assert not (tmp_path / "data/raw/arxiv.jsonl.gz").exists()


def test_output_is_identical_across_runs(kaggle_sample: Path, tmp_path: Path):
    """gzip with mtime=0: rerunning the stage changes no byte, so DVC reruns nothing downstream."""
    first, second = tmp_path / "a.gz", tmp_path / "b.gz"
    download.write_raw(open_records(kaggle_sample), first, 100, "file")
    download.write_raw(open_records(kaggle_sample), second, 100, "file")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[4:8] == bytes(4)  # gzip header mtime, else a later run differs
    assert gzip.GzipFile(fileobj=io.BytesIO(first.read_bytes())).read().count(b"\n") == 100
