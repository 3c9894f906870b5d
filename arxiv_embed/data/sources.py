"""Where the download stage reads arXiv metadata from.

Every reader is a generator of JSON lines (bytes, Kaggle snapshot schema) that reads only as far as
its consumer asks, so `download.max_records` stops a multi-GB file or a harvest early:
- `open_records`: a local JSON-lines file, plain, gzip or zip (Kaggle's archive), lines verbatim;
- `stream_url_records`: the same from a URL, a zip read front to back without touching the disk;
- `harvest_oai`: arXiv's OAI-PMH `ListRecords` (metadataPrefix=arXiv), converted to the schema.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import io
import json
import math
import os
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path, PurePosixPath
from typing import IO, Any
from arxiv_embed.errors import UserError

USER_AGENT = "arxiv-embed/0.1 (DVC pipeline fine-tuning sentence embeddings on arXiv metadata; Python urllib)"
OFFLINE_HINT = (
    "Without network, point the stage at a local JSON-lines file (plain, .gz or Kaggle's .zip):\n"
    "  dvc exp run -S download.source=file -S download.path=/path/to/arxiv.jsonl.gz"
)
GZIP_MAGIC, ZIP_MAGIC = b"\x1f\x8b", b"PK\x03\x04"
KAGGLE_MEMBER = "arxiv-metadata-oai-snapshot.json"
JSON_SUFFIXES = (".json", ".jsonl")
CHUNK = 1 << 20
OAI, ARXIV = "{http://www.openarchives.org/OAI/2.0/}", "{http://arxiv.org/OAI/arXiv/}"
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 600.0  # honour Retry-After, but a broken header must not park the stage for hours


class DownloadError(UserError):
    """A source cannot be read; the message names it and says what to do."""


class NoNetworkError(DownloadError):
    """The host cannot be reached at all (DNS, refused, timeout)."""


# ---------------------------------------------------------------- local files and URLs

def open_records(path: Path | str) -> Iterator[bytes]:
    """Yield the non-blank lines of a local JSON-lines file (plain, gzip or zip), verbatim."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{path}: no such file (download.path); set download.path to the arXiv JSON-lines file")
    with path.open("rb") as raw:
        magic = raw.read(4)
    if magic.startswith(GZIP_MAGIC):
        stream: IO[bytes] = gzip.open(path, "rb")
    elif magic == ZIP_MAGIC:
        stream = _open_zip_member(path)
    else:
        stream = path.open("rb")
    with stream:
        yield from _lines(stream, str(path))


def stream_url_records(url: str, timeout_s: float) -> Iterator[bytes]:
    """Yield the JSON lines behind `url` (zip, gzip or plain) while downloading: no copy on disk."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key:
        # Unredirected: the download redirects to cloud storage, which must not see the key.
        token = base64.b64encode(f"{user}:{key}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        response = _urlopen(request, timeout_s)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{url}: HTTP {exc.code} {exc.reason}; if Kaggle wants credentials set KAGGLE_USERNAME and KAGGLE_KEY "
            f"in the environment, or download the zip yourself and set download.path to it"
        ) from None
    with response:
        if response.headers.get_content_type() == "text/html":
            raise DownloadError(
                f"{url} answered with a web page, not the dataset (Kaggle may want credentials: set KAGGLE_USERNAME "
                f"and KAGGLE_KEY in the environment), or download the zip yourself and set download.path to it"
            )
        body = io.BufferedReader(response, CHUNK)
        magic = body.peek(4)[:4]
        if magic == ZIP_MAGIC:
            stream: IO[bytes] = io.BufferedReader(_ZipStreamMember(body, url), CHUNK)
        elif magic.startswith(GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=body, mode="rb")
        else:
            stream = body
        yield from _lines(stream, url)


def _lines(stream: IO[bytes], label: str) -> Iterator[bytes]:
    count = 0
    try:
        for line in stream:
            if line.strip():  # blank lines are not records; everything else goes to clean as is
                count += 1
                yield line if line.endswith(b"\n") else line + b"\n"
    except (EOFError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile) as exc:
        raise DownloadError(
            f"{label}: truncated or corrupt after {count} records ({exc}); download the file again "
            f"(`gzip -t` / `unzip -t` checks it), or cap download.max_records below the damage"
        ) from None
    except OSError as exc:
        raise DownloadError(f"{label}: reading failed after {count} records ({exc}); try again") from None


def _safe_member(name: str) -> bool:
    """A member name that could not land outside a target directory if anyone extracted it."""
    parts = PurePosixPath(name.replace("\\", "/"))
    return not (parts.is_absolute() or ".." in parts.parts or ":" in name)


def _open_zip_member(path: Path) -> IO[bytes]:
    """The JSON member of a local zip, as a stream (decompressed on the fly, never extracted)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            unsafe = [name for name in names if not _safe_member(name)]
            if unsafe:
                raise DownloadError(
                    f"{path}: refusing a zip whose member names escape their folder {unsafe[:3]} (absolute paths "
                    f"or '..'); this is not Kaggle's archive: download it again from Kaggle"
                )
            candidates = [name for name in names if name.endswith(JSON_SUFFIXES)]
            preferred = [name for name in candidates if PurePosixPath(name).name == KAGGLE_MEMBER]
            if len(preferred) != 1 and len(candidates) != 1:
                raise DownloadError(
                    f"{path}: expected one .json member ({KAGGLE_MEMBER}), found {candidates or 'none'} among "
                    f"{names[:5]}; set download.path to the JSON-lines file itself"
                )
            # The open member keeps the file open after the `with` closes the archive.
            return archive.open((preferred or candidates)[0])
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{path}: not a readable zip ({exc}); download it again") from None


class _ZipStreamMember(io.RawIOBase):
    """The first member of a zip read front to back from a stream (an HTTP body), inflated on the fly.

    zipfile needs to seek to the central directory at the end; Kaggle's archive holds a single
    member whose local header comes first, so streaming it lets max_records stop the download.
    """

    def __init__(self, stream: IO[bytes], label: str) -> None:
        header = stream.read(30)
        if len(header) < 30 or not header.startswith(ZIP_MAGIC):
            raise DownloadError(f"{label}: not a complete zip; download it by hand and set download.path to it")
        flags, method = struct.unpack("<HH", header[6:10])
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        name = stream.read(name_len).decode("utf-8" if flags & 0x800 else "cp437")
        stream.read(extra_len)
        if not _safe_member(name) or not name.endswith(JSON_SUFFIXES) or method != zipfile.ZIP_DEFLATED:
            raise DownloadError(
                f"{label}: the zip's first member {name!r} is not a deflated .json file with a safe name; "
                f"download the archive by hand and set download.path to it"
            )
        self._stream, self._label = stream, label
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if self._inflate.eof:
                return 0
            data = self._inflate.unconsumed_tail or self._stream.read(CHUNK)
            if not data:
                raise DownloadError(f"{self._label}: the download ended before the end of the zip; try again")
            self._out = self._inflate.decompress(data, CHUNK)
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        self._out = self._out[size:]
        return size


def _urlopen(request: urllib.request.Request, timeout_s: float) -> Any:
    """urlopen, with every way of not reaching the host turned into one clear NoNetworkError."""
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NoNetworkError(f"no network: cannot reach {request.full_url} ({reason}).\n{OFFLINE_HINT}") from None


# ---------------------------------------------------------------- OAI-PMH

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
) -> Iterator[dict[str, Any]]:
    """Yield Kaggle-schema records set by set, each set capped at its share of what is left of
    max_records (so every archive is represented); stops requesting as soon as the cap is met."""
    client = _OaiClient(endpoint, max_retries, request_interval_s, timeout_s, sleep)
    seen: set[str] = set()
    for index, set_spec in enumerate(sets):
        quota = None if max_records is None else math.ceil((max_records - len(seen)) / (len(sets) - index))
        taken = 0
        if quota != 0:
            for record in client.list_records(set_spec, from_date, until_date):
                if record["id"] in seen:  # a cross-listed paper is in several sets
                    continue
                seen.add(record["id"])
                taken += 1
                yield record
                if taken == quota:
                    break
        print(f"download: OAI set {set_spec}: {taken} records")


class _OaiClient:
    """One polite OAI-PMH conversation: a request every request_interval_s, 503s retried."""

    def __init__(self, endpoint: str, max_retries: int, interval_s: float, timeout_s: float, sleep: Callable) -> None:
        self.endpoint, self.max_retries, self.interval_s, self.timeout_s = endpoint, max_retries, interval_s, timeout_s
        self.sleep = sleep
        self._last_request = -math.inf

    def list_records(self, set_spec: str, from_date: str | None, until_date: str | None) -> Iterator[dict[str, Any]]:
        query = {"verb": "ListRecords", "metadataPrefix": "arXiv", "set": set_spec, "from": from_date, "until": until_date}
        query = {key: value for key, value in query.items() if value}
        while True:
            root = self.get(query)
            error = root.find(f"{OAI}error")
            if error is not None:
                if error.get("code") == "noRecordsMatch":  # an empty set or window, not a failure
                    return
                raise DownloadError(
                    f"{self.endpoint}: OAI-PMH error {error.get('code')} for set {set_spec!r}: {(error.text or '').strip()}; "
                    f"check download.oai.sets, from_date and until_date"
                )
            listing = root.find(f"{OAI}ListRecords")
            if listing is None:
                raise DownloadError(f"{self.endpoint}: the answer has no ListRecords; is download.oai.endpoint an OAI-PMH endpoint?")
            for record in listing.iterfind(f"{OAI}record"):
                # Deleted records have a header and no metadata: nothing to convert.
                if record.find(f"{OAI}metadata/{ARXIV}arXiv") is not None:
                    yield to_kaggle(record)
            token = (listing.findtext(f"{OAI}resumptionToken") or "").strip()
            if not token:
                return
            query = {"verb": "ListRecords", "resumptionToken": token}

    def get(self, query: dict[str, str]) -> ET.Element:
        url = f"{self.endpoint}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        for attempt in range(self.max_retries + 1):
            self.sleep(max(0.0, self._last_request + self.interval_s - time.monotonic()))
            self._last_request = time.monotonic()
            try:
                with _urlopen(request, self.timeout_s) as response:
                    return _parse_xml(response.read(), url)
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS or attempt == self.max_retries:
                    raise DownloadError(
                        f"{url}: HTTP {exc.code} {exc.reason} after {attempt} retries; try again later, or raise "
                        f"download.oai.max_retries; check download.oai.endpoint"
                    ) from None
                wait = _retry_after(exc.headers.get("Retry-After"), default=10.0 * (attempt + 1))
                print(f"download: OAI-PMH answered {exc.code}; retry {attempt + 1}/{self.max_retries} in {wait:.0f} s")
                self.sleep(wait)
            except (TimeoutError, ConnectionError) as exc:  # the host answered, then stalled
                raise NoNetworkError(f"no network: {url} stopped answering ({exc}).\n{OFFLINE_HINT}") from None
        raise AssertionError("unreachable: the last attempt returns or raises")


def _parse_xml(body: bytes, url: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise DownloadError(f"{url}: the answer is not OAI-PMH XML ({exc}); check download.oai.endpoint") from None


def _retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
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
    datestamp = header.findtext(f"{OAI}datestamp") or text("updated") or created
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
