"""params.yaml `download` (the download stage)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from arxiv_embed.data.sources import SOURCES
from arxiv_embed.schema.base import HttpUrl, IsoDate, NonNegativeInt, PositiveInt, Section, distinct

# How patiently download fetches, not what: no stage tracks these (dvc.yaml), so a changed timeout reruns no harvest,
# and the release's manifest leaves them out (model_dump's exclude form).
FETCH_PATIENCE = {"download": {"timeout_s": True, "oai": {"max_retries", "request_interval_s"}}}
FETCHED_WITH = "fetched_with_params_sha256"  # in metrics/download.json: push checks the card's data source against it


# An arXiv OAI-PMH set spec: "cs", "physics:astro-ph", "cs:cs:AI". Never empty: an empty set is no
# filter at all, so OAI-PMH would harvest the whole repository in the date window.
SetSpec = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9-]+(:[A-Za-z0-9-]+)*$")]


class Oai(Section):
    endpoint: HttpUrl
    sets: Annotated[list[SetSpec], Field(min_length=1), AfterValidator(distinct)]  # a set given twice would be harvested twice
    from_date: IsoDate | None
    until_date: IsoDate | None
    max_retries: NonNegativeInt
    request_interval_s: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _window(self) -> Oai:
        if self.from_date and self.until_date and self.from_date > self.until_date:
            raise ValueError("download.oai.from_date must be <= download.oai.until_date (YYYY-MM-DD)")
        return self


class Download(Section):
    source: Literal[tuple(SOURCES)]  # type: ignore[valid-type]  # the SOURCES table's keys
    path: str | None
    max_records: PositiveInt | None
    kaggle_url: HttpUrl
    timeout_s: Annotated[float, Field(gt=0.0)]
    oai: Oai

    @model_validator(mode="after")
    def _file_needs_path(self) -> Download:
        if self.source == "file" and not self.path:
            raise ValueError("download.source is 'file' but download.path is empty: set it to a local JSON-lines file")
        return self


class DownloadParams(Section):
    download: Download


def fetched_with(download: Download) -> str:
    """sha256 of the download knobs dvc.yaml tracks (what is fetched, not how patiently). download records it with the
    raw file; push refuses a card whose data source differs (a push run alone after a change would name data that did
    not train the model). DVC reruns download whenever they change."""
    knobs = download.model_dump(mode="json", exclude=FETCH_PATIENCE["download"])
    return hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()
