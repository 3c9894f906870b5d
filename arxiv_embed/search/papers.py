"""Papers to index, from the pipeline's parquet (clean/split output) or Kaggle-schema JSON lines (.gz ok)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from arxiv_embed.errors import UserError

# What the index keeps per paper (besides text_sha256, which decides what a rebuild re-encodes).
COLUMNS = {"id": pl.String, "title": pl.String, "authors": pl.String, "categories": pl.List(pl.String),
           "year": pl.Int16, "abstract": pl.String}
REQUIRED = ("id", "title", "abstract", "categories")
STRING_FIELDS = ("id", "title", "abstract", "authors")  # in JSON lines; categories may also be a list
JSON_STRING_LIST = r'^\[\s*(?:"(?:[^"\\]|\\.)*"\s*(?:,\s*"(?:[^"\\]|\\.)*"\s*)*)?\]$'  # ["cs.AI", "cs.LG"], as polars writes a list


class SearchError(UserError):
    """Bad input to build or query; the message names the file/flag and what to do."""


def first_line(error: BaseException) -> str:
    """An exception's first line (library errors run to many), or its type when it has no message."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class UnknownPaperError(SearchError):
    """An id that is not in the index (HTTP 404)."""


def archive_of(category: str) -> str:
    """cs.LG -> cs, hep-th -> hep-th: the filter also accepts a whole archive."""
    return category.split(".", 1)[0]


def archive_expr(categories: pl.Expr) -> pl.Expr:
    """archive_of as a polars expression, for a column of millions of categories."""
    return categories.str.split_exact(".", 1).struct.field("field_0")


def _has_created(versions: pl.DataType | None) -> bool:
    """Whether a `versions` column holds structs with `created`: a batch whose every record has `"versions": []`
    (what download writes for an OAI record without a date) or structs without it is read as List(Null) or the like."""
    return (isinstance(versions, pl.List) and isinstance(versions.inner, pl.Struct)
            and any(field.name == "created" for field in versions.inner.fields))


def _kept_columns(schema: pl.Schema) -> list[pl.Expr]:
    """The index's columns from a file's: whitespace made single, categories a list, the year from the first version."""
    categories = pl.col("categories")
    if schema["categories"] == pl.String:  # Kaggle schema: one space-separated string
        # A batch mixing that with lists is read as text, each list as its JSON text: decoded back, not split.
        listed = pl.when(categories.str.contains(JSON_STRING_LIST)).then(categories).str.json_decode(pl.List(pl.String))
        categories = pl.coalesce(listed, categories.str.replace_all(r"\s+", " ").str.split(" "))
    if "first_version_date" in schema:  # the clean stage's parsed date (text in JSON lines)
        date = pl.col("first_version_date")
        dated = (date.str.to_date(strict=False) if schema["first_version_date"] == pl.String else date.cast(pl.Date, strict=False)).dt.year()
    elif _has_created(schema.get("versions")):  # Kaggle: [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"}, ...]
        dated = pl.col("versions").list.first().struct.field("created").str.extract(r"\b(\d{4})\b").cast(pl.Int32, strict=False)
    else:
        dated = pl.lit(None, dtype=pl.Int32)
    paper_id = pl.col("id").cast(pl.String)
    from_id = pl.when(paper_id.str.contains(r"^\d{4}\.")).then(2000 + paper_id.str.slice(0, 2).cast(pl.Int32, strict=False))
    authors = pl.col("authors") if "authors" in schema else pl.lit(None, dtype=pl.String)
    return [
        paper_id.str.strip_chars(),
        pl.col("title").cast(pl.String).str.replace_all(r"\s+", " ").str.strip_chars().fill_null(""),  # untitled: found by its abstract
        authors.cast(pl.String).str.replace_all(r"\s+", " ").str.strip_chars().fill_null("").alias("authors"),
        # "gr-qc  hep-th " and "" split to blank names, which no filter can ask for: as clean does, none is kept
        categories.cast(pl.List(pl.String)).list.eval(pl.element().str.strip_chars()).list.filter(pl.element() != "").alias("categories"),
        pl.coalesce(dated.cast(pl.Int32), from_id).cast(pl.Int16).alias("year"),
        pl.col("abstract").cast(pl.String).str.replace_all(r"\s+", " ").str.strip_chars(),
    ]


def _read_json_lines(path: Path) -> pl.DataFrame:
    """JSON lines of the Kaggle schema (.gz ok; categories a space-separated string or a list), a batch at a time: memory
    holds the columns kept, not the whole file and its parse (the 4.5 GB snapshot would need ~15 GB). A batch with a line
    that is no JSON object is read line by line, and such lines are counted and named, not indexed; so are lines whose
    id, title, abstract or authors is no string (polars would index a list's JSON text as the abstract)."""
    from arxiv_embed.data.records import line_batches, without_boms, wrong_types
    from arxiv_embed.progress import Progress

    frames, present, rejected, mistyped = [], set(), [], []
    meter = Progress(f"search: read {path.name}", unit="records")  # ~1 min for the 4.5 GB snapshot: a line every 15 s
    try:
        for first, chunk in line_batches(path):
            rejected_before, mistyped_before = len(rejected), len(mistyped)
            chunk = without_boms(chunk)  # as clean reads it
            if wrong := wrong_types(lines := chunk.split(b"\n"), STRING_FIELDS):
                mistyped += [first + index for index in wrong]
                wrong = set(wrong)  # blanked, not removed: the other lines keep their numbers
                chunk = b"\n".join(b"" if index in wrong else line for index, line in enumerate(lines))
            try:
                pieces = [pl.read_ndjson(chunk, infer_schema_length=None)]
            except pl.exceptions.PolarsError:
                pieces = []
                for number, line in enumerate(chunk.split(b"\n"), first):
                    if not line.strip():
                        continue
                    try:
                        pieces.append(pl.read_ndjson(line, infer_schema_length=None))
                    except pl.exceptions.PolarsError:
                        rejected.append(number)
            for piece in pieces:
                present |= set(piece.columns)
                piece = piece.with_columns(pl.lit(None, dtype=pl.String).alias(name) for name in REQUIRED if name not in piece.columns)
                frames.append(piece.select(_kept_columns(piece.schema)))
            meter.update(sum(piece.height for piece in pieces) + len(rejected) - rejected_before + len(mistyped) - mistyped_before)
    except UserError as exc:  # cut off or not JSON lines at all; the clean stage's advice (re-run download) is not for --papers
        raise SearchError(f"--papers {str(exc).split('; re-run the download stage')[0]}") from None
    meter.done()
    named, wrongly = _numbers(rejected), f"whose {', '.join(STRING_FIELDS[:-1])} or {STRING_FIELDS[-1]} is no string: lines {_numbers(mistyped)}"
    if not sum(frame.height for frame in frames):
        raise SearchError(f"--papers {path}: no JSON lines (one JSON object per line){f'; not one: lines {named}' if rejected else ''}"
                          f"{f'; {len(mistyped)} line(s) {wrongly}' if mistyped else ''}")
    if missing := set(REQUIRED) - present:  # a key no record has
        raise SearchError(f"--papers {path}: missing column(s) {sorted(missing)}; need {', '.join(REQUIRED)}")
    if rejected:
        print(f"search: left out {len(rejected)} line(s) of {path} that are not one JSON object: lines {named}")
    if mistyped:
        print(f"search: left out {len(mistyped)} line(s) of {path} {wrongly}")
    return pl.concat(frames)


def _numbers(lines: list[int]) -> str:
    return ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")


def read_papers(path: Path) -> pl.DataFrame:
    """id, title, authors, categories (list), year, abstract, text_sha256.

    Records without an id or abstract are reported and left out; a repeated id keeps its first record.
    """
    if not path.exists():
        raise SearchError(f"--papers {path}: no such file")
    if path.stat().st_size == 0:
        raise SearchError(f"--papers {path}: the file is empty")
    if path.suffix == ".parquet":
        try:
            papers = pl.scan_parquet(path)
            schema = papers.collect_schema()
            if missing := set(REQUIRED) - set(schema):
                raise SearchError(f"--papers {path}: missing column(s) {sorted(missing)}; need {', '.join(REQUIRED)}")
            frame = papers.select(_kept_columns(schema)).collect(engine="streaming")  # the file's other columns are never read
        except (pl.exceptions.PolarsError, OSError) as error:
            raise SearchError(f"--papers {path} is not a readable parquet file ({first_line(error)}): is it cut off, or still being "
                              "written? Write it again (dvc repro split for data/split/*.parquet)") from None
    else:
        frame = _read_json_lines(path)
    invalid = frame.filter(pl.col("id").fill_null("").eq("") | (pl.col("abstract").fill_null("") == ""))
    if invalid.height:  # filtered only then: a filter copies every abstract
        print(f"search: left out {invalid.height} record(s) of {path} without id or abstract: {invalid['id'].head(5).to_list()}")
        frame = frame.filter(pl.col("id").fill_null("").ne("") & (pl.col("abstract").fill_null("") != ""))
    if frame["id"].is_duplicated().any():
        print(f"search: {path} repeats {frame.height - frame['id'].n_unique()} id(s); keeping each id's first record")
        frame = frame.unique("id", keep="first", maintain_order=True)
    return frame.with_columns(
        pl.col("abstract").map_elements(lambda s: hashlib.sha256(s.encode()).hexdigest(), return_dtype=pl.String).alias("text_sha256")
    )
