"""What every schema part shares: the strict Section, common field types, and reading params.yaml.

Every section forbids unknown keys, so a typo (`learning_rte`) fails loudly instead of being
ignored, and the error names the key, what was given and what is allowed. The schema has no
defaults: params.yaml is the one source of values (what `dvc params diff` sees), so a key missing
from it is an error that names the key.
"""

from __future__ import annotations

import difflib
import re
import typing
from datetime import date
from urllib.parse import urlsplit
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from arxiv_embed.errors import UserError, redact_url

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
T = TypeVar("T")


def _checked_url(url: str) -> str:
    # urllib reads "user:key@host" as a host name (the download fails as "no network"), and the key would be printed.
    if "@" in url.split("/")[2]:
        raise ValueError("a URL with user:password@ is not supported (it would be printed): arXiv's OAI-PMH needs no "
                         "credentials, and Kaggle's go in KAGGLE_USERNAME and KAGGLE_KEY in the environment")
    # A typo here would otherwise pass, then cost minutes of retries (or a traceback) at download time.
    if any(c.isspace() or not c.isprintable() for c in url) or not url.isascii():
        raise ValueError("a URL cannot hold spaces, control characters or non-ASCII letters (percent-encode them, e.g. %20; "
                         "a non-ASCII host name in its xn-- form)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if not parts.hostname:
        raise ValueError("the URL names no host")
    if parts.query:  # DVC keeps params' values in dvc.lock (git) and its run-cache (pushed to remotes)
        raise ValueError("a URL with a query (?...) is not supported: a signed link's token would be kept in dvc.lock and "
                         "DVC's run-cache; download the file and set download.path to it")
    return url


def distinct(values: list[T]) -> list[T]:
    """A list whose items are each given once (a set harvested twice, a loss term counted twice)."""
    repeated = sorted({str(value) for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(repeated)} more than once: give each once")
    return values


def hub_repo_id(repo_id: str | None) -> str | None:
    """The Hub's rule (huggingface_hub.utils.validate_repo_id), checked before any work instead of after it."""
    if repo_id is not None and (not re.fullmatch(r"(?:[\w.-]{1,96}/)?[\w.-]{1,96}", repo_id) or "--" in repo_id or ".." in repo_id
                                or any(part[0] in "-." or part[-1] in "-." for part in repo_id.split("/"))):
        raise ValueError(f"{repo_id!r} is not a Hub repo id: 'user/model-name' (letters, digits, '-', '_', '.')")
    return repo_id


HttpUrl = Annotated[str, Field(pattern=r"^https?://[^/]"), AfterValidator(_checked_url)]


def _calendar_date(value: str) -> str:
    """YYYY-MM-DD that names a real day (2026-02-30 does not): OAI-PMH servers answer a bad date with an error."""
    try:
        date.fromisoformat(value)
    except ValueError:
        raise ValueError("not a date of the calendar (YYYY-MM-DD)") from None
    return value


# An unquoted YAML date (`from_date: 2026-10-01`) reaches the schema as text (read_yaml resolves no dates); a date
# object still passes, for params built in code.
IsoDate = Annotated[
    str,
    BeforeValidator(lambda value: value.isoformat() if isinstance(value, date) else value),
    Field(pattern=r"^\d{4}-\d{2}-\d{2}$"),
    AfterValidator(_calendar_date),
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)  # .inf: a traceback later, or NaN weights


class ParamsError(UserError):
    """params.yaml is missing, unreadable or does not match the schema."""


def _keys_at(schema: type[BaseModel], path: tuple) -> list[str]:
    """The keys the schema takes at `path` (a section's own fields), or [] where it is not a section."""
    model: type[BaseModel] | None = schema
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = next((kind for kind in (field.annotation, *typing.get_args(field.annotation))
                      if isinstance(kind, type) and issubclass(kind, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _describe(error: dict, schema: type[BaseModel]) -> str:
    key = ".".join(str(part) for part in error["loc"] if part != "[key]") or "(top level)"  # a mapping's key: its own name
    if error["type"] == "extra_forbidden":
        known = _keys_at(schema, tuple(error["loc"][:-1]))
        if not known:
            return f"{key}: unknown key (check the spelling against params.yaml's documented keys)"
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        return f"{key}: unknown key{f' (did you mean {close[0]}?)' if close else ''}; the keys here are {', '.join(known)}"
    if error["type"] == "missing":
        return f"{key}: missing (params.yaml is the one source of values: add the key, as documented in the committed params.yaml)"
    given, message = error.get("input"), error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and isinstance(given, dict):  # a rule over several keys: its message names them
        return message
    if isinstance(given, str):  # a URL's user:password@ and query (a signed link's token) are not printed
        given = redact_url(given)
    given = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{key}: {message}{given}"


Schema = TypeVar("Schema", bound=Section)


def validate(schema: type[Schema], raw: object, source: str = str(PARAMS_FILE), whole: bool = False) -> Schema:
    """Validate the sections `schema` names (all of raw when `whole`); raise ParamsError naming each bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    if not whole:  # a stage's part: the other sections are other stages' business
        raw = {name: raw[name] for name in schema.model_fields if name in raw}
    try:
        # Strict: "32" is not an int. Strict mode still takes `epochs: 1` for a float field.
        return schema.model_validate(raw)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e, schema) for e in exc.errors())
        raise ParamsError(f"{source} is invalid:\n  {lines}") from None


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML reads `2e-5` as a string (YAML 1.1); DVC and YAML 1.2 read it as a float. Read it as
    DVC does, so `learning_rate: 2e-5` in params.yaml means the same to the stages as to `dvc exp run -S`."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
# Dates stay text: PyYAML would raise a bare ValueError for `from_date: 2026-02-30` (no key named, a traceback);
# as text, the schema's IsoDate check names the key.
_Yaml12FloatLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _Yaml12FloatLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: Path | str = PARAMS_FILE) -> object:
    """params.yaml as DVC reads it (YAML 1.2 floats)."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12FloatLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run the stage from the project root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


def load(schema: type[Schema], path: Path | str = PARAMS_FILE) -> Schema:
    """The sections of params.yaml a stage reads, validated (every stage calls this first)."""
    return validate(schema, read_yaml(path), str(path))
