"""Reading raw arXiv JSON lines (Kaggle snapshot schema) into typed, normalised polars frames.

Used by the clean stage. The schema is explicit so that an id like `0704.0010` stays a string, and
a record with a field of the wrong type (a number id, a list title, a `versions` that is no list of
objects) is rejected as `wrong_type` instead of changing the column's type or being cast to text.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
from arxiv_embed.errors import InputError
from arxiv_embed.files import MAX_LINE_BYTES

RAW_SCHEMA = {
    "id": pl.String,
    "title": pl.String,
    "abstract": pl.String,
    "authors": pl.String,
    "comments": pl.String,
    "categories": pl.String,
    "versions": pl.List(pl.Struct({"version": pl.String, "created": pl.String})),
    "update_date": pl.String,
}
STRING_FIELDS = [name for name, dtype in RAW_SCHEMA.items() if dtype == pl.String]
# A string field's key followed by anything but a string or null. read_ndjson would cast such a value
# to its JSON text (704.001 -> "704.001"), so lines matching this are checked with json.loads (a key
# inside a string is escaped, \"id\", and cannot match; one in a nested object can: hence the check).
# The second branch: a key spelled with \u escapes ("\u0069d" is "id" to a JSON parser), which the first
# cannot see: letters, "_" and \u escapes, at least one escape, then a colon (a string in a list is no key).
_ESCAPED_NAME = r'(?:[A-Za-z_]|\\u[0-9A-Fa-f]{4})*\\u[0-9A-Fa-f]{4}(?:[A-Za-z_]|\\u[0-9A-Fa-f]{4})*"\s*:'


def _wrong_type_pattern(fields: tuple[str, ...]) -> str:
    return r'[{,]\s*"(?:(?:' + "|".join(fields) + r')"\s*:\s*[^"\sn]|' + _ESCAPED_NAME + ")"


# Every reason a record can be rejected for, in the order the checks run.
UNUSABLE = ["malformed_json", "wrong_type", "missing_id", "missing_title", "missing_abstract", "missing_categories", "invalid_categories"]
FILTERED = ["withdrawn", "abstract_too_short", "abstract_too_long"]
REASONS = [*UNUSABLE, *FILTERED, "duplicate_id", "duplicate_text"]

BATCH_BYTES = 32 * 2**20  # ~20k snapshot records a batch: bounds memory whatever the file size
SIEVE_LINES, FAN_OUT = 512, 16  # parse a batch in 16 pieces; a failing piece splits again until small enough to sieve
# arXiv category codes: archive (hep-th, cond-mat) optionally dot subject class (cs.CV, cond-mat.mes-hall).
CATEGORIES = r"^[A-Za-z][A-Za-z0-9-]*(\.[A-Za-z0-9-]+)?( [A-Za-z][A-Za-z0-9-]*(\.[A-Za-z0-9-]+)?)*$"
# Withdrawal stubs, e.g. "This paper has been withdrawn by the authors." (abstract or comments).
WITHDRAWN = (
    r"(?i)\b(paper|article|manuscript|submission|preprint|work)\s+(has\s+been\s+|is\s+|was\s+)?(withdrawn|removed\s+by\s+arxiv)"
    r"|\bwithdrawn\s+by\s+(the\s+)?(author|submitter|arxiv)"
)
# \n, \t, NBSP, thin space...; and NUL, which polars reads a lone surrogate escape ("\ud800") as.
WHITESPACE = [c for c in map(chr, range(0x3001)) if (c.isspace() or c == "\x00") and c != " "]
# Invisible format characters (soft hyphen, zero-width space and joiners, word joiner, BOM): deleted, so that "net\u00adworks"
# is "networks" to dedup, split's copy key and the tokenizer, and a title of nothing else is missing.
INVISIBLE = [c for c in map(chr, range(0x10000)) if unicodedata.category(c) == "Cf"]
RFC2822 = "%a, %d %b %Y %H:%M:%S GMT"  # versions[].created, e.g. "Mon, 2 Apr 2007 19:18:42 GMT"
UNREADABLE = ["unreadable_first_version", "unreadable_update_date"]  # tidy's flags: a date given that does not parse


def line_batches(path: Path, batch_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based number of the first line, run of whole lines) from a plain or gzip file.

    The next batch is read and decompressed in a thread while the caller works on this one
    (zlib and polars release the GIL), and at most two batches are in memory.
    """
    if not path.exists():
        raise InputError(f"{path} does not exist; run the download stage first (dvc repro download)")
    batches = _line_batches(path, batch_bytes or BATCH_BYTES)
    with ThreadPoolExecutor(1) as reader:
        upcoming = reader.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = reader.submit(next, batches, None)  # before the yield: read while the caller works
            yield batch


_join = b"".join  # one name for it: a test counts the joins a long line costs (once, not once per block)


def _line_batches(path: Path, batch_bytes: int) -> Iterator[tuple[int, bytes]]:
    first, parts, size, in_long_line = 1, [], 0, False
    try:
        for block in _content(path, max(1, batch_bytes // 16)):
            parts.append(block)
            size += len(block)
            if size < batch_bytes or (in_long_line and b"\n" not in block and size <= MAX_LINE_BYTES):
                continue  # a line longer than a batch is joined once it ends, not again with every block
            data = _join(parts)
            cut = data.rfind(b"\n") + 1
            if not cut and size > MAX_LINE_BYTES:
                raise InputError(f"{path}: line {first} is over {MAX_LINE_BYTES >> 20} MB long; this is not a JSON-lines file")
            if cut:
                yield first, data[:cut]
                first += data.count(b"\n", 0, cut)
            parts, size, in_long_line = [data[cut:]], size - cut, not cut
    except (EOFError, OSError, zlib.error) as exc:
        intact = first - 1 + sum(part.count(b"\n") for part in parts)  # the lines read whole, this batch's included
        raise InputError(
            f"{path} is truncated or corrupt after line {intact} ({exc}); re-run the download stage "
            "(or re-fetch the file download.path points to)"
        ) from None
    if size:
        yield first, _join(parts)


def _content(path: Path, block_bytes: int) -> Iterator[bytes]:
    """The file's bytes, gunzipped (all members) when it is gzip. zlib directly, not GzipFile:
    GzipFile's readline costs as much CPU again as the decompression itself."""
    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            fh.seek(0)
            while block := fh.read(block_bytes):
                yield block
            return
        fh.seek(0)
        inflate, started = zlib.decompressobj(wbits=31), False
        while block := fh.read(block_bytes):
            while block:
                yield inflate.decompress(block)
                started, block = True, b""
                if inflate.eof:  # a gzip member ended: the rest of the block starts the next one
                    block, inflate, started = inflate.unused_data, zlib.decompressobj(wbits=31), False
        if started and not inflate.eof:
            raise EOFError("the gzip stream ends before its end-of-stream marker")


BOM = b"\xef\xbb\xbf"


def without_boms(chunk: bytes) -> bytes:
    """A run of lines less the UTF-8 byte-order mark opening any of them (Windows tools; BOM files concatenated): it is
    no part of the record."""
    return chunk.removeprefix(BOM).replace(b"\n" + BOM, b"\n") if BOM in chunk else chunk


def parse_batch(chunk: bytes, first_line: int) -> tuple[pl.DataFrame, list[dict]]:
    """Parse one batch of lines: (records with their `line` number, rejects: malformed_json and wrong_type).

    Blank lines are not records and are skipped. Lines that do not even look like one JSON object
    (cut off by a broken download, blank) and lines with a string field of the wrong type are set
    aside first, so that the rest still parses in one polars call; a bad line that looks whole sends
    its batch down the slower path of `_read`.
    """
    chunk = without_boms(chunk)
    lines = chunk.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    odd = [i for i, line in enumerate(lines) if line[:1] != b"{" or line[-1:] != b"}"]
    wrong = wrong_types(lines)
    if not odd and not wrong:
        try:
            frame = pl.read_ndjson(chunk, schema=RAW_SCHEMA)
            if frame.height == len(lines):
                line = pl.int_range(first_line, first_line + frame.height, dtype=pl.Int64)
                return frame.select(line.alias("line"), *RAW_SCHEMA), []
        except pl.exceptions.PolarsError:
            pass
    aside = set(odd) | set(wrong)
    regular = [(first_line + i, line) for i, line in enumerate(lines) if i not in aside]
    suspects = [(first_line + i, lines[i]) for i in odd if lines[i].strip() and i not in wrong]
    frames, bad = _read(regular, trusted=False) if aside else _read_pieces(regular, trusted=False)
    suspect_frames, more_bad = _read(suspects, trusted=False)  # e.g. valid objects with a trailing \r
    # A line polars refuses is wrong_type if it is a JSON object (a `versions` of the wrong shape).
    refused = [(n, line, "wrong_type" if _is_object(line) else "malformed_json") for n, line in bad + more_bad]
    refused += [(first_line + i, lines[i], "wrong_type") for i in wrong]
    rejects = [reject_row(n, line, reason) for n, line, reason in sorted(refused)]
    records = pl.concat(frames + suspect_frames) if frames or suspect_frames else pl.DataFrame(schema={"line": pl.Int64, **RAW_SCHEMA})
    return records.sort("line") if suspect_frames else records, rejects


_LEADING_ID = re.compile(rb'^\s*\{\s*"id"\s*:\s*"([^"\\]{1,100})"')


def reject_row(number: int, line: bytes, reason: str) -> dict:
    """A rejects-file row for a line that is no usable record, parsed once: its id where it says one, so a reject can
    be looked up (a JSON object's string or integer `id`, or the `"id": "..."` a cut-off line starts with: the Kaggle
    and download order), and for wrong_type the fields it gets wrong."""
    try:
        record = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        record = None
    if isinstance(record, dict):
        found = record.get("id")
        if isinstance(found, int) and not isinstance(found, bool):  # an id written as a number: 12345 is "12345"
            found = str(found)
        found = found if isinstance(found, str) and _encodes(found) else None
    else:
        leading = _LEADING_ID.match(line) if record is None else None
        found = leading.group(1).decode("utf-8", errors="replace") if leading else None
    row = {"line": number, "reason": reason, "id": found, "raw": text(line)}
    if reason == "wrong_type":  # always a JSON object (_is_object or _has_wrong_type said so)
        row["fields"] = wrong_fields(record)
    return row


_JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}


def wrong_fields(record: dict) -> str:
    """What a wrong_type record gets wrong, e.g. "title: list, id: number": a string field given another JSON type, or
    `versions` not a list of {version, created} objects."""
    wrong = [f"{name}: {_JSON_TYPES[type(record[name])]}" for name in STRING_FIELDS
             if record.get(name) is not None and not isinstance(record[name], str)]
    versions = record.get("versions")
    if versions is not None and not (isinstance(versions, list) and all(isinstance(v, dict) for v in versions)):
        wrong.append(f"versions: {_JSON_TYPES.get(type(versions), 'value')}, not a list of objects")
    return ", ".join(wrong) or "a value polars cannot read as the schema says (see raw)"


def _encodes(value: str) -> bool:
    """Whether a decoded JSON string can be written as UTF-8: a "\\ud800" escape decodes to a lone surrogate, which
    cannot (the raw line, kept as text, still shows it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def wrong_types(lines: list[bytes], fields: tuple[str, ...] = tuple(STRING_FIELDS)) -> list[int]:
    """Indices of the lines that are JSON objects with a number, list, object or boolean in a string field (one of
    `fields`; the search reader's are fewer).

    The regex runs in polars over the whole batch (~0.03 s a 32 MB batch, a few seconds over the
    whole snapshot); json.loads only confirms the few lines it flags.
    """
    try:
        texts = pl.Series(lines, dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.ComputeError:  # invalid UTF-8 in some line (malformed_json anyway): decode lossily
        texts = pl.Series([line.decode("utf-8", errors="replace") for line in lines], dtype=pl.String)
    flagged = texts.str.contains(_wrong_type_pattern(fields))
    return [i for i in flagged.arg_true().to_list() if _has_wrong_type(lines[i], fields)]


def _has_wrong_type(line: bytes, fields: tuple[str, ...]) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # not JSON at all: malformed_json, found by the parse
        return False
    return isinstance(record, dict) and any(not isinstance(record.get(name), (str, type(None))) for name in fields)


def _read(numbered: list[tuple[int, bytes]], trusted: bool) -> tuple[list[pl.DataFrame], list[tuple[int, bytes]]]:
    """(frames of the lines that parse, the (number, line)s that do not); `trusted`: every line is a JSON object."""
    if not numbered:
        return [], []
    try:
        frame = pl.read_ndjson(b"\n".join(line for _, line in numbered), schema=RAW_SCHEMA)
        if frame.height != len(numbered):  # e.g. two objects on one line
            raise ValueError("line count mismatch")
    except (pl.exceptions.PolarsError, ValueError):
        if len(numbered) == 1:
            return [], numbered
        if len(numbered) > SIEVE_LINES:  # narrow down at polars' speed first
            return _read_pieces(numbered, trusted)
        if not trusted:  # cheap first sieve: lines that are not JSON objects at all
            is_object = [_is_object(line) for _, line in numbered]
            bad = [item for item, ok in zip(numbered, is_object) if not ok]
            frames, worse = _read([item for item, ok in zip(numbered, is_object) if ok], trusted=True)
            return frames, sorted(bad + worse)
        # Valid JSON with a field of the wrong type: bisect to find the offending lines.
        mid = len(numbered) // 2
        left, right = _read(numbered[:mid], True), _read(numbered[mid:], True)
        return left[0] + right[0], left[1] + right[1]
    lines = pl.Series("line", [n for n, _ in numbered], dtype=pl.Int64)
    return [frame.with_columns(lines).select("line", *RAW_SCHEMA)], []


def _read_pieces(numbered: list[tuple[int, bytes]], trusted: bool) -> tuple[list[pl.DataFrame], list[tuple[int, bytes]]]:
    """_read on FAN_OUT consecutive pieces, results in line order."""
    step = max(1, -(-len(numbered) // FAN_OUT))
    pieces = [_read(numbered[i : i + step], trusted) for i in range(0, len(numbered), step)]
    return [frame for frames, _ in pieces for frame in frames], [item for _, bad in pieces for item in bad]


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # includes UnicodeDecodeError
        return False


def with_raw(rejects: list[dict], chunk: bytes, first_line: int) -> list[dict]:
    """Add each reject's raw line (from the batch it came from) as `raw`."""
    lines = chunk.split(b"\n") if rejects else []
    return [row | {"raw": text(lines[row["line"] - first_line])} for row in rejects]


def text(line: bytes) -> str:
    """A raw line as it goes into the rejects file."""
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def _normalised(column: str) -> pl.Expr:
    """Runs of whitespace (arXiv's hard line breaks and indents) become one space, invisible format characters go;
    LaTeX stays.

    Same result as replace_all(r"\\s+", " ") (after the deletions), ~3x faster: one multi-pattern pass, then collapse spaces.
    """
    spaced = pl.col(column).str.replace_many(WHITESPACE + INVISIBLE, [" "] * len(WHITESPACE) + [""] * len(INVISIBLE))
    return spaced.str.replace_all(" {2,}", " ").str.strip_chars(" ")


def tidy(records: pl.DataFrame, min_words: int, max_words: int) -> pl.DataFrame:
    """Typed, normalised papers plus `unusable` (reason it cannot be used) and `reason` (filter)."""
    normalised = records.with_columns(
        # "arXiv:2101.00050v2" is paper 2101.00050 (the snapshot's form): one paper, one id, so its versions are
        # de-duplicated and never land in two splits. No arXiv id ends in v<digits> otherwise.
        id=pl.col("id").str.strip_chars().str.replace(r"^(?i)arxiv:\s*", "").str.replace(r"(\d)v\d+$", "${1}"),
        title=_normalised("title"),
        abstract=_normalised("abstract"),
        authors=_normalised("authors"),
        categories=_normalised("categories"),
    )
    words = pl.col("abstract").str.count_matches(" ", literal=True) + 1  # normalised: one space between words
    checks = [
        ("missing_id", pl.col("id").fill_null("") == ""),
        ("missing_title", pl.col("title").fill_null("") == ""),
        ("missing_abstract", pl.col("abstract").fill_null("") == ""),
        ("missing_categories", pl.col("categories").fill_null("") == ""),
        ("invalid_categories", ~pl.col("categories").str.contains(CATEGORIES)),
    ]
    filters = [
        ("withdrawn", pl.col("abstract").str.contains(WITHDRAWN) | pl.col("comments").str.contains(WITHDRAWN).fill_null(False)),
        ("abstract_too_short", words < min_words),
        ("abstract_too_long", words > max_words),
    ]
    created = pl.col("versions").list.first().struct.field("created")
    first_version = created.str.strptime(pl.Date, RFC2822, strict=False)
    updated = pl.col("update_date").str.strip_chars().str.to_date("%Y-%m-%d", strict=False)
    return normalised.with_columns(
        unusable=_first_true(checks),
        reason=_first_true(filters),
        categories=pl.col("categories").str.split(" "),
        primary_category=pl.col("categories").str.split(" ").list.first(),
        first_version_date=first_version,
        update_date=updated,
        # A date given but not readable becomes null (the paper is kept): counted, so clean can say how many.
        unreadable_first_version=created.is_not_null() & first_version.is_null(),
        unreadable_update_date=pl.col("update_date").is_not_null() & updated.is_null(),
        n_versions=pl.col("versions").list.len().fill_null(0),
        title_hash=pl.col("title").hash(),
        text_hash=pl.col("abstract").hash(),
    ).with_columns(archive=pl.col("primary_category").str.split(".").list.first()).drop("comments", "versions")


def _first_true(checks: list[tuple[str, pl.Expr]]) -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for reason, failed in reversed(checks):
        expr = pl.when(failed.fill_null(False)).then(pl.lit(reason)).otherwise(expr)
    return expr
