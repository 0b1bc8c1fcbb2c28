"""Progress that works in a log file as well as on a terminal.

A bar redrawn in place is right on a terminal and useless in a batch job's log (tqdm
prints nothing until its first refresh, then carriage returns). So: a tqdm bar when
stderr is a terminal, otherwise one plain line every ``every`` seconds::

    with Progress(total=100_000, verb="relaxed", unit="structures") as progress:
        progress.update(64)
    # relaxed 4,210/100,000 structures, 39.8/min, ETA 41 min
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

#: Seconds between progress lines when stderr is not a terminal.
LOG_EVERY = 30.0


class Progress:
    """Counts work done; shows it as a bar (terminal), periodic lines (logs) or not at all.

    Args:
        total: units of work in all (``None``: unknown, no ETA).
        verb: what is done to a unit (``"relaxed"``).
        unit: the units' name, plural.
        enabled: ``False`` shows nothing.
        initial: units already done before this process started (a resumed run).
        every: seconds between lines when not on a terminal.
        stream: where to write (default ``sys.stderr``).
    """

    def __init__(
        self,
        total: int | None,
        *,
        verb: str,
        unit: str,
        enabled: bool = True,
        initial: int = 0,
        every: float = LOG_EVERY,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.verb, self.unit, self.every = total, verb, unit, every
        self.done = self._initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._bar = None
        if enabled and self.stream.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=verb, unit=unit.rstrip("s"), file=self.stream)
        self._t0 = self._last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.every:
            self._line()

    def skip(self, n: int) -> None:
        """Count ``n`` units done by an earlier run (left out of this process's rate)."""
        self.done += n
        self._initial += n
        if self._bar is not None:
            self._bar.update(n)

    def line(self) -> str:
        """``relaxed 4,210/100,000 structures, 39.8/min, ETA 41 min`` (rate of this process)."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.done - self._initial) / elapsed * 60.0
        text = f"{self.verb} {self.done:,}" + (f"/{self.total:,}" if self.total is not None else "") + f" {self.unit}"
        text += f", {rate:,.1f}/min"
        if self.total is not None and rate > 0:
            text += f", ETA {_duration(60.0 * (self.total - self.done) / rate)}"
        return text

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
