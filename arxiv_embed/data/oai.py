"""arXiv's OAI-PMH API (`ListRecords`, metadataPrefix=arXiv) as a source of Kaggle-schema records:
polite pacing, resumption tokens, 503/Retry-After retries, records converted field by field. Each answered
page can be saved (`pages`): a harvest that stopped (a failure after the retries, Ctrl-C) resumes from its
saved pages instead of asking hours of pages again."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.client
import itertools
import json
import math
import re
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import date, timezone
from pathlib import Path
from typing import Any

from arxiv_embed.data.http import USER_AGENT, DownloadError, NoNetworkError, open_url
from arxiv_embed.errors import redact_url
from arxiv_embed.files import write_bytes

OAI, ARXIV = "{http://www.openarchives.org/OAI/2.0/}", "{http://arxiv.org/OAI/arXiv/}"
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 600.0  # honour Retry-After, but a broken header must not park the stage for hours


def harvest_oai(
    endpoint: str,
    sets: list[str],
    from_date: str | None = None,
    until_date: str | None = None,
    max_records: int | None = None,
    *,
    max_retries: int = 5,
    request_interval_s: float = 3.0,
    timeout_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    pages: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield Kaggle-schema records set by set, each set capped at its share of what is left of
    max_records (so every archive is represented); stops requesting as soon as the cap is met.
    pages: a folder for this harvest's answered pages (one per endpoint, sets and window: `pages_folder`),
    read back instead of asked again; the caller deletes it once the harvest is written."""
    client = _OaiClient(endpoint, max_retries, request_interval_s, timeout_s, sleep)
    # id -> the datestamp passed on. A paper comes again when it is cross-listed in a later set, updated during the
    # harvest, or on a page asked again (see _listing): a newer copy goes on too (clean keeps an id's latest record
    # and keeps the older aside as duplicate_id); a copy no newer is skipped, and counted.
    seen: dict[str, str] = {}
    days: dict[str, str] = {}  # one string object per datestamp: 2.7M ids share a few thousand dates
    harvested = 0
    for index, set_spec in enumerate(sets):
        quota = None if max_records is None else math.ceil((max_records - harvested) / (len(sets) - index))
        taken = newer = skipped = 0
        client.deleted = 0
        if quota != 0:
            saved = pages / f"{index:03d}-{re.sub(r'[^A-Za-z0-9.-]', '_', set_spec)}" if pages else None
            for record in _listing(client, set_spec, from_date, until_date, saved):
                arxiv_id, day = record["id"], record["update_date"] or ""
                if arxiv_id in seen:
                    if day <= seen[arxiv_id]:
                        skipped += 1
                        continue
                    newer += 1  # a record like any other: max_records caps the raw file's lines, as for a file source
                taken += 1
                harvested += 1
                if arxiv_id:  # a record without one goes on to clean, which counts and keeps it aside (missing_id)
                    seen[arxiv_id] = days.setdefault(day, day)
                yield record
                if taken == quota:
                    break
        others = [f"{what}: {count}" for what, count in (("of them newer copies of papers read before", newer),
                                                         ("copies no newer than one read before, skipped", skipped),
                                                         ("deleted records, skipped", client.deleted)) if count]
        print(f"download: OAI set {set_spec}: {taken} records" + (f" ({'; '.join(others)})" if others else ""))
    if max_records is not None and harvested < max_records:  # a later set smaller than its share: not refilled from earlier ones
        print(f"download: {harvested} of download.max_records={max_records} records: the last sets held fewer than their share")


def pages_folder(root: Path, endpoint: str, sets: list[str], from_date: str | None, until_date: str | None) -> Path:
    """The saved pages of one harvest: another endpoint, set list or window, or another version of this module (pages
    hold converted records), never reads them."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([endpoint, sets, from_date, until_date, code]).encode()).hexdigest()[:16]
    return root / key


def _listing(client: _OaiClient, set_spec: str, from_date: str | None, until_date: str | None, saved: Path | None) -> Iterator[dict[str, Any]]:
    """One set's records, from its saved pages first. A saved resumption token the server has dropped since
    (tokens expire) restarts the set: the records already yielded come again and harvest_oai skips them by id."""
    without_id = 0  # records without an id cannot be told apart: as many as came before are skipped after a restart
    try:
        for record in client.list_records(set_spec, from_date, until_date, saved):
            without_id += not record["id"]
            yield record
    except ExpiredToken:
        print(f"download: OAI set {set_spec}: the server no longer knows the saved place in the listing; asking the set again "
              "(papers already read are skipped)", flush=True)
        shutil.rmtree(saved, ignore_errors=True)
        client.deleted = 0  # the set's deleted records come again too
        for record in client.list_records(set_spec, from_date, until_date, saved):
            if not record["id"] and without_id:
                without_id -= 1
                continue
            yield record


class ExpiredToken(DownloadError):
    """badResumptionToken for a token read from a saved page."""


class _OaiClient:
    """One polite OAI-PMH conversation: a request every request_interval_s, 503s retried."""

    def __init__(self, endpoint: str, max_retries: int, interval_s: float, timeout_s: float, sleep: Callable) -> None:
        self.max_retries, self.interval_s, self.timeout_s = max_retries, interval_s, timeout_s
        # An endpoint may carry a query (an access token): requests add theirs to it, and messages show it hidden.
        self.url, self.endpoint = endpoint, redact_url(endpoint) if urllib.parse.urlsplit(endpoint).query else endpoint
        self.sleep = sleep
        self._last_request = -math.inf
        self.answered = False  # has the host answered once? (then a failed connection is a blip, retried)
        self.deleted = 0  # deleted records (a header, no metadata) on the pages read, saved ones included

    def list_records(self, set_spec: str, from_date: str | None, until_date: str | None, saved: Path | None = None) -> Iterator[dict[str, Any]]:
        """saved: the set's folder of answered pages (page N's records and the token after it), read before asking."""
        query = {"verb": "ListRecords", "metadataPrefix": "arXiv", "set": set_spec, "from": from_date, "until": until_date}
        # Only absent dates are left out: an empty set spec sent as is gets an OAI error, where
        # leaving it out would harvest the whole repository.
        query = {key: value for key, value in query.items() if value is not None}
        tokens: set[str] = set()
        token_saved = False  # was the token in `query` read from a saved page?
        for number in itertools.count():
            page = saved / f"page-{number:06d}.json.gz" if saved else None
            if page and page.exists():
                if number == 0:
                    print(f"download: OAI set {set_spec}: reading the pages a stopped run saved", flush=True)
                answer = json.loads(gzip.decompress(page.read_bytes()))
                records, token, deleted, token_saved = answer["records"], answer["token"], answer["deleted"], True
            else:
                records, token, deleted = self._page(query, set_spec, from_saved=token_saved)
                token_saved = False
                # gzip: a whole harvest's pages are GBs of JSON. An empty last page (noRecordsMatch: a window not yet
                # announced) is not kept, so a rerun asks again.
                if page and (records or token):
                    answer = {"token": token, "records": records, "deleted": deleted}
                    write_bytes(page, gzip.compress(json.dumps(answer).encode(), compresslevel=1))
            self.deleted += deleted
            yield from records
            if not token:
                return
            if token in tokens:  # the same place again: the listing would never end
                raise DownloadError(f"{self.endpoint}: OAI-PMH sent resumptionToken {token!r} twice for set {set_spec!r}, so the "
                                    "listing would never end; try again later")
            tokens.add(token)
            query = {"verb": "ListRecords", "resumptionToken": token}

    def _page(self, query: dict[str, str], set_spec: str, from_saved: bool) -> tuple[list[dict[str, Any]], str, int]:
        """One ListRecords answer: (its records, the resumption token after it ("" at the end), its deleted records)."""
        root = self.get(query)
        error = root.find(f"{OAI}error")
        if error is not None:
            if error.get("code") == "noRecordsMatch":  # an empty set or window, not a failure
                return [], "", 0
            if error.get("code") == "badResumptionToken" and from_saved:
                raise ExpiredToken(f"{self.endpoint}: saved resumptionToken for set {set_spec!r} expired")
            advice = ("the server dropped its place in the listing (tokens expire): rerun the download (it reads the pages "
                      "saved so far, then asks the set again)"
                      if error.get("code") == "badResumptionToken" else "check download.oai.sets, from_date and until_date")
            raise DownloadError(
                f"{self.endpoint}: OAI-PMH error {error.get('code')} for set {set_spec!r}: {(error.text or '').strip()}; {advice}"
            )
        listing = root.find(f"{OAI}ListRecords")
        if listing is None:
            raise DownloadError(f"{self.endpoint}: the answer has no ListRecords; is download.oai.endpoint an OAI-PMH endpoint?")
        # Deleted records have a header and no metadata: nothing to convert (counted).
        answered = listing.findall(f"{OAI}record")
        records = [to_kaggle(record) for record in answered if record.find(f"{OAI}metadata/{ARXIV}arXiv") is not None]
        return records, (listing.findtext(f"{OAI}resumptionToken") or "").strip(), len(answered) - len(records)

    def get(self, query: dict[str, str]) -> ET.Element:
        """One OAI-PMH answer. 429/5xx (Retry-After honoured) and an answer that breaks off are retried with backoff;
        so is a host that cannot be reached once it has answered before (a blip hours into a harvest). A host that
        never answered is no network: said at once, with the offline recipe."""
        url = f"{self.url}{'&' if urllib.parse.urlsplit(self.url).query else '?'}{urllib.parse.urlencode(query)}"
        shown = url if self.url == self.endpoint else f"{self.endpoint} ({urllib.parse.urlencode(query)})"
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        for attempt in range(self.max_retries + 1):
            self.sleep(max(0.0, self._last_request + self.interval_s - time.monotonic()))
            self._last_request = time.monotonic()
            last = attempt == self.max_retries
            try:
                with open_url(request, self.timeout_s) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS:
                    raise DownloadError(f"{shown}: HTTP {exc.code} {exc.reason}; check download.oai.endpoint") from None
                if last:
                    raise DownloadError(f"{shown}: HTTP {exc.code} {exc.reason} after {attempt} retries; try again later, or raise "
                                        "download.oai.max_retries") from None
                wait, why = _retry_after(exc.headers.get("Retry-After"), default=10.0 * (attempt + 1)), f"answered {exc.code}"
            except NoNetworkError:
                if not self.answered or last:
                    raise
                wait, why = 10.0 * (attempt + 1), "could not be reached"
            # The answer broke off: ssl.SSLError (a TLS stream closed mid-answer, SSLEOFError) is no ConnectionError.
            except (TimeoutError, ConnectionError, http.client.HTTPException, ssl.SSLError) as exc:
                if last:
                    raise DownloadError(f"{shown}: the answer broke off ({type(exc).__name__}: {exc}) after {attempt} retries; "
                                        "try again later, or raise download.oai.max_retries") from None
                wait, why = 10.0 * (attempt + 1), f"broke off ({type(exc).__name__})"
            else:
                self.answered = True
                try:
                    return ET.fromstring(body)
                except ET.ParseError as exc:
                    root = _without_forbidden_characters(body, shown)
                    if root is not None:
                        return root
                    if _whole_oai_xml(body):  # the same broken page again on a retry: said at once, not after minutes
                        raise DownloadError(f"{shown}: the answer is whole but not well-formed XML ({exc}); the server sent a "
                                            "broken page: rerun later (the pages saved so far are kept), and if it stays "
                                            "broken, report it to the endpoint's owner") from None
                    # Cut off (a connection closed without a Content-Length to check) or empty: asked again. Anything
                    # else (a web page) is no OAI-PMH endpoint, and so is XML still broken after the retries.
                    if last or not _cut_off_xml(body):
                        raise DownloadError(f"{shown}: the answer is not OAI-PMH XML ({exc}); check download.oai.endpoint") from None
                wait, why = 10.0 * (attempt + 1), "broke off (XML cut short)"
            print(f"download: OAI-PMH {why}; retry {attempt + 1}/{self.max_retries} in {wait:.0f} s")
            self.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")


# Characters XML 1.0 forbids (C0 controls but tab, newline and carriage return), raw or as character references. One
# in a record (a form feed pasted into an abstract) makes the parser refuse its whole page, and every page after it.
_FORBIDDEN_XML = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]|&#(?:[xX]0*(?:[0-8bBcCeEfF]|1[0-9a-fA-F])|0*(?:[0-8]|1[1-24-9]|2[0-9]|3[01]));")


def _without_forbidden_characters(body: bytes, shown: str) -> ET.Element | None:
    """The page parsed with each character XML forbids replaced by a space (counted in the log); None if that is not
    what broke it. In UTF-8 these bytes stand only for themselves, never inside another character."""
    cleaned, replaced = _FORBIDDEN_XML.subn(b" ", body)
    if not replaced:
        return None
    try:
        root = ET.fromstring(cleaned)
    except ET.ParseError:
        return None
    print(f"download: {shown}: {replaced} control character(s) XML forbids replaced by spaces")
    return root


def _whole_oai_xml(body: bytes) -> bool:
    """An answer that reached its closing tag: it did not break off on the way."""
    return body.rstrip().endswith(b"</OAI-PMH>")


def _cut_off_xml(body: bytes) -> bool:
    """An answer that began as OAI-PMH XML (or is empty) but does not parse: it broke off on the way."""
    start = body.lstrip()[:200]
    return not start or start.startswith(b"<?xml") or b"<OAI-PMH" in start


def _retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            # An HTTP date is GMT; asctime's form carries no zone, and .timestamp() would read it as local time.
            seconds = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    if math.isnan(seconds):  # float("nan") parses, and time.sleep(nan) raises
        return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


# ---------------------------------------------------------------- arXiv format -> Kaggle schema

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def to_kaggle(record: ET.Element) -> dict[str, Any]:
    """One OAI `record` (arXiv metadata format) as a Kaggle snapshot record, fields in Kaggle's order.

    The arXiv format has no submitter and no version history: `submitter` is null and `versions`
    holds v1 dated by `created`. `update_date` is the record's datestamp, as in the snapshot.
    """
    header, meta = record.find(f"{OAI}header"), record.find(f"{OAI}metadata/{ARXIV}arXiv")

    def text(tag: str) -> str | None:
        value = meta.findtext(f"{ARXIV}{tag}")
        return value if value and value.strip() else None

    parsed = [
        [author.findtext(f"{ARXIV}{part}") or "" for part in ("keyname", "forenames", "suffix")]
        for author in meta.iterfind(f"{ARXIV}authors/{ARXIV}author")
    ]
    names = [" ".join(part for part in (forenames, keyname, suffix) if part) for keyname, forenames, suffix in parsed]
    created = text("created")
    # A record without a header (a broken page) still has its metadata: dated by it.
    datestamp = (header.findtext(f"{OAI}datestamp") if header is not None else None) or text("updated") or created
    return {
        "id": text("id"),
        "submitter": None,
        "authors": (", ".join(names[:-1]) + " and " + names[-1]) if len(names) > 1 else (names[0] if names else None),
        "title": text("title"),
        "comments": text("comments"),
        "journal-ref": text("journal-ref"),
        "doi": text("doi"),
        "report-no": text("report-no"),
        "categories": " ".join((text("categories") or "").split()) or None,
        "license": text("license"),
        "abstract": text("abstract"),
        "versions": [{"version": "v1", "created": _rfc2822(created)}] if created else [],
        "update_date": datestamp[:10] if datestamp else None,
        "authors_parsed": parsed,
    }


def _rfc2822(day: str) -> str:
    """'2026-10-01' -> 'Thu, 1 Oct 2026 00:00:00 GMT', the snapshot's style (locale-independent)."""
    try:
        parsed = date.fromisoformat(day.strip()[:10])
    except ValueError:
        return day  # clean decides what an unparseable date is worth
    return f"{_DAYS[parsed.weekday()]}, {parsed.day} {_MONTHS[parsed.month - 1]} {parsed.year} 00:00:00 GMT"


def json_line(record: dict[str, Any]) -> bytes:
    """A record as one snapshot-style line (compact, ASCII-escaped like Kaggle's)."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"
