"""What every network source shares: who we say we are, one error for an unreachable host, and
the offline recipe that error prints."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from arxiv_embed.errors import UserError, redact_url

USER_AGENT = "arxiv-embed/0.1 (DVC pipeline fine-tuning sentence embeddings on arXiv metadata; Python urllib)"
OFFLINE_HINT = (
    "Without network, point the stage at a local JSON-lines file (plain, .gz or Kaggle's .zip):\n"
    "  dvc exp run -S download.source=file -S download.path=/path/to/arxiv.jsonl.gz"
)

class DownloadError(UserError):
    """A source cannot be read; the message names it and says what to do."""


class NoNetworkError(DownloadError):
    """The host cannot be reached at all (DNS, refused, timeout)."""


def open_url(request: urllib.request.Request, timeout_s: float) -> Any:
    """urlopen, with every way of not reaching the host turned into one clear NoNetworkError."""
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NoNetworkError(f"no network: cannot reach {redact_url(request.full_url)} ({reason}).\n{OFFLINE_HINT}") from None
