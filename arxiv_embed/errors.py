"""One user-facing error type, and the runner every stage's `__main__` goes through.

A `UserError` is a problem the user can fix (bad params, a missing or malformed input, an
unreachable server): its message names the file, line or param and what to do, and the runner
prints it alone, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; the message names the file or param and the fix."""

    exit_code = 1


class TrainingSetupError(UserError):
    """The finetune params, the data or the model do not fit together."""


class Interrupted(UserError):
    """SIGTERM or Ctrl-C: the stage stopped cleanly (its outputs are untouched)."""

    exit_code = 130


def run(main: Callable[[], object], name: str | None = None) -> None:
    """Run a stage's main(): a UserError is printed as `<stage>: error: <message>` and exits non-zero."""
    name = name or Path(sys.argv[0]).stem
    try:
        main()
    except UserError as error:
        print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt as interrupt:
        print(f"{name}: interrupted ({interrupt or 'Ctrl-C'}); outputs left as they were, rerun to continue", file=sys.stderr, flush=True)
        sys.exit(Interrupted.exit_code)
