"""Where the download stage reads arXiv metadata from: `SOURCES`, one entry per `download.source`
(adding a source is one reader and one entry; the params schema takes its choices from here).

Every reader is a generator of JSON lines (bytes, Kaggle snapshot schema) that reads only as far as
its consumer asks, so `download.max_records` stops a multi-GB file or a harvest early:
- `open_records`: a local JSON-lines file, plain, gzip or zip (Kaggle's archive), lines verbatim;
- `stream_url_records`: the same from a URL, a zip read front to back without touching the disk;
- `harvest_oai` (oai.py): arXiv's OAI-PMH `ListRecords`, converted to the schema.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import os
import struct
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from arxiv_embed.data.http import USER_AGENT, DownloadError, open_url
from arxiv_embed.errors import redact_url
from arxiv_embed.files import MAX_LINE_BYTES
from arxiv_embed.data.oai import harvest_oai, json_line, pages_folder
from arxiv_embed.paths import OAI_PAGES, kept_between_runs, user_path

if TYPE_CHECKING:
    from arxiv_embed.schema.download import Download

GZIP_MAGIC, ZIP_MAGIC = b"\x1f\x8b", b"PK\x03\x04"
KAGGLE_MEMBER = "arxiv-metadata-oai-snapshot.json"
KAGGLE_HOSTS = ("www.kaggle.com", "kaggle.com")  # the only hosts KAGGLE_KEY is sent to
JSON_SUFFIXES = (".json", ".jsonl")
CHUNK = 1 << 20


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
    shown = redact_url(url)
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if user and key and sends_kaggle_key(url):
        # Unredirected: the download redirects to cloud storage, which must not see the key.
        token = base64.b64encode(f"{user}:{key}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        response = open_url(request, timeout_s)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{shown}: HTTP {exc.code} {exc.reason}; if Kaggle wants credentials set KAGGLE_USERNAME and KAGGLE_KEY "
            f"in the environment, or download the zip yourself and set download.path to it"
        ) from None
    with response:
        if response.headers.get_content_type() == "text/html":
            raise DownloadError(
                f"{shown} answered with a web page, not the dataset (Kaggle may want credentials: set KAGGLE_USERNAME "
                f"and KAGGLE_KEY in the environment), or download the zip yourself and set download.path to it"
            )
        body = io.BufferedReader(response, CHUNK)
        try:
            magic = body.peek(4)[:4]
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"{shown}: the download broke off ({type(exc).__name__}: {exc}); try again") from None
        if magic == ZIP_MAGIC:
            stream: IO[bytes] = io.BufferedReader(_ZipStreamMember(body, shown), CHUNK)
        elif magic.startswith(GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=body, mode="rb")
        else:
            stream = body
        yield from _lines(stream, shown)
        if magic == ZIP_MAGIC:  # the member ended; the zip's directory after it is still to come before the length check
            try:
                while body.read(CHUNK):
                    pass
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(f"{shown}: the download broke off ({type(exc).__name__}: {exc}); try again") from None
        if response.length:  # http.client ends a short body quietly: what its Content-Length promised and never came
            raise DownloadError(f"{shown}: the download ended {response.length:,} bytes short of its Content-Length; try again")


def sends_kaggle_key(url: str) -> bool:
    """Whether a request to `url` may carry KAGGLE_USERNAME/KAGGLE_KEY: Kaggle's own hosts over https only, never a
    mirror that download.kaggle_url may name, nor plain http, where anyone on the way reads the header."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" and (parts.hostname or "") in KAGGLE_HOSTS


def _lines(stream: IO[bytes], label: str) -> Iterator[bytes]:
    count = number = 0
    try:
        while line := stream.readline(MAX_LINE_BYTES + 1):  # bounded: never a whole multi-GB line in memory
            number += 1
            if len(line) > MAX_LINE_BYTES:
                raise DownloadError(
                    f"{label}: line {number} (after {count} records) is over {MAX_LINE_BYTES >> 20} MB long: this is not "
                    f"JSON lines (one record a line; a JSON array of records, say). Convert it to JSON lines "
                    f"(`jq -c '.[]' file.json > file.jsonl`) and set download.path to that"
                )
            if line.strip():  # blank lines are not records; everything else goes to clean as is
                count += 1
                yield line if line.endswith(b"\n") else line + b"\n"
    except (EOFError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile) as exc:
        raise DownloadError(
            f"{label}: truncated or corrupt after {count} records ({exc}); download the file again "
            f"(`gzip -t` / `unzip -t` checks it), or cap download.max_records below the damage"
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # HTTPException: a chunked body cut off (IncompleteRead)
        raise DownloadError(f"{label}: reading failed after {count} records ({type(exc).__name__}: {exc}); try again") from None


def _safe_member(name: str) -> bool:
    """A member name that could not land outside a target directory if anyone extracted it."""
    parts = PurePosixPath(name.replace("\\", "/"))
    return not (parts.is_absolute() or ".." in parts.parts or ":" in name)


def _macos_metadata(name: str) -> bool:
    """A resource-fork entry macOS's "Compress" adds beside each file (`__MACOSX/._data.jsonl`): not data."""
    parts = PurePosixPath(name.replace("\\", "/"))
    return "__MACOSX" in parts.parts or parts.name.startswith("._")


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
            candidates = [name for name in names if name.endswith(JSON_SUFFIXES) and not _macos_metadata(name)]
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
    except (NotImplementedError, RuntimeError) as exc:  # Deflate64 (Windows' zip of large files), encryption: zipfile cannot read them
        raise DownloadError(f"{path}: zipfile cannot read this zip ({exc}); unzip it with another tool and set download.path "
                            "to the .json file inside") from None


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
        # A byte changed on the way can still inflate: the member's CRC-32 (zipfile checks it for a local zip) is in
        # the local header, or after the data (flag bit 3: a data descriptor, as a streaming writer makes).
        self._crc, self._header_crc = 0, None if flags & 0x08 else struct.unpack("<I", header[14:18])[0]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if self._inflate.eof:
                if self._crc is not None:
                    self._check_crc()
                return 0
            data = self._inflate.unconsumed_tail or self._stream.read(CHUNK)
            if not data:
                raise DownloadError(f"{self._label}: the download ended before the end of the zip; try again")
            self._out = self._inflate.decompress(data, CHUNK)
            self._crc = zlib.crc32(self._out, self._crc)
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        self._out = self._out[size:]
        return size

    def _check_crc(self) -> None:
        """At the member's end: its CRC-32 against the one the zip gives (zipfile's "Bad CRC-32" for a local zip)."""
        expected = self._header_crc
        if expected is None:  # the data descriptor: optional signature, then the CRC
            after = self._inflate.unused_data
            after += self._stream.read(max(0, 8 - len(after)))
            if len(after) < 8:
                raise DownloadError(f"{self._label}: the download ended before the end of the zip; try again")
            expected = struct.unpack("<I", after[4:8] if after.startswith(b"PK\x07\x08") else after[:4])[0]
        crc, self._crc = self._crc, None
        if crc != expected:
            raise zipfile.BadZipFile(f"Bad CRC-32 for the zip's member: {crc:08x}, the zip says {expected:08x}")


# ---------------------------------------------------------------- the sources download.source names


def oai_pages(params: Download) -> Path:
    """The saved pages of the harvest `params` asks for, in the project's own root: a `dvc exp run --temp` or queued
    run that stops resumes too (its temporary copy is deleted)."""
    oai = params.oai
    return pages_folder(kept_between_runs(OAI_PAGES), oai.endpoint, oai.sets, oai.from_date, oai.until_date)


def _oai(params: Download) -> tuple[Iterator[bytes], str]:
    oai = params.oai
    records = harvest_oai(
        oai.endpoint, oai.sets, oai.from_date, oai.until_date, params.max_records,
        max_retries=oai.max_retries, request_interval_s=oai.request_interval_s, timeout_s=params.timeout_s,
        pages=oai_pages(params),
    )
    window = f"{oai.from_date or 'start'}..{oai.until_date or 'now'}"
    return (json_line(record) for record in records), f"oai {redact_url(oai.endpoint)} (sets {', '.join(oai.sets)}; {window})"


def _kaggle(params: Download) -> tuple[Iterator[bytes], str]:
    if params.path:
        return open_records(user_path(params.path)), f"kaggle {params.path}"
    return stream_url_records(params.kaggle_url, params.timeout_s), f"kaggle {redact_url(params.kaggle_url)}"


def _file(params: Download) -> tuple[Iterator[bytes], str]:
    return open_records(user_path(params.path)), f"file {params.path}"


@dataclass(frozen=True)
class Source:
    read: Callable[[Download], tuple[Iterator[bytes], str]]  # -> (the source's JSON lines, a short name for messages)
    describe: Callable[[Download, str], str]  # (params, ", first N records" or "") -> the model card's words on the data


# download.source -> its reader and its description. Adding a source is one entry (the schema takes its choices from here).
SOURCES: dict[str, Source] = {
    "oai": Source(_oai, lambda d, limit: f"arXiv OAI-PMH {redact_url(d.oai.endpoint)}, sets {', '.join(d.oai.sets)}, "
                                         f"{d.oai.from_date or 'the first record'} to {d.oai.until_date or 'the harvest'}{limit}"),
    # A file by its name only: the card and the release are shared, and a full path shows the user's folders.
    "kaggle": Source(_kaggle, lambda d, limit: f"Kaggle arXiv metadata snapshot ({Path(d.path).name if d.path else redact_url(d.kaggle_url)}{limit})"),
    "file": Source(_file, lambda d, limit: f"local file `{Path(d.path or '').name}` (Kaggle arXiv snapshot schema{limit})"),
}


def describe_source(download: Download) -> str:
    """Where the data came from, in the source's own words: download records it (metrics/download.json) for the card."""
    return SOURCES[download.source].describe(download, f", first {download.max_records} records" if download.max_records else "")
