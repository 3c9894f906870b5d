"""Progress lines for long loops, readable in `dvc repro`'s log: count, rate and ETA, one plain line
at most every `interval_s` seconds (DVC captures stdout, so a carriage-return bar would be one huge line)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from transformers import TrainerCallback

T = TypeVar("T")
INTERVAL_S = 15.0


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN: no rate yet
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Progress:
    """`update(n)` after each piece of work; a line is printed when `interval_s` has passed since the
    last one, and `done()` prints the total. `total=None`: no ETA (a stream of unknown length)."""

    def __init__(self, what: str, total: int | None = None, unit: str = "items", interval_s: float = INTERVAL_S) -> None:
        self.what, self.total, self.unit, self.interval_s = what, total, unit, interval_s
        self.count = 0
        self.started = self.last = time.monotonic()

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = f"{self.what}{' done' if final else ''}: {self.count:,}" + (f"/{self.total:,}" if self.total is not None else "") + f" {self.unit}"
        text += f" ({rate:,.1f}/s, {_duration(elapsed)} elapsed"
        if self.total is not None and not final:
            text += f", ~{_duration((self.total - self.count) / rate if rate else float('nan'))} left"
        return text + ")"

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            print(self.line(), file=sys.stderr, flush=True)

    def done(self) -> None:
        print(self.line(final=True), file=sys.stderr, flush=True)


def progress(items: Iterable[T], what: str, total: int | None = None, unit: str = "items",
             interval_s: float = INTERVAL_S) -> Iterator[T]:
    """`for item in progress(items, "clean: read"):` -- a line every `interval_s` seconds and one at the end."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    meter = Progress(what, total, unit, interval_s)
    for item in items:
        yield item
        meter.update()
    meter.done()


def trainer_callback(what: str, interval_s: float = INTERVAL_S) -> TrainerCallback:
    """A transformers TrainerCallback printing Progress lines for training steps, from the first process
    only (under torchrun every rank runs it, and one line per step count is enough). Pass disable_tqdm=True
    to the arguments (its bar is carriage returns, one huge line in DVC's log) and remove the
    PrinterCallback transformers adds in its place (training.trainer.quiet)."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        meter: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            if args.process_index == 0:  # the global rank, from the arguments: the same on a fresh and a resumed run
                self.meter = Progress(what, state.max_steps - state.global_step, "steps", interval_s)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            if self.meter is not None:
                self.meter.update()

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            if self.meter is not None:
                self.meter.done()

    return StepProgress()
