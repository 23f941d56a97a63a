"""A one-line progress counter for long commands: on a terminal only, never in pipes or logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`\\r`-rewritten "label n/total" on `stream` when it is a TTY, at most every `every` s."""

    def __init__(
        self, label: str, total: int, stream: TextIO | None = None, every: float = 0.1
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.total = total
        self.every = every
        self._last = 0.0
        self._shown = False

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self._last < self.every:
            return
        self._last = now
        self._shown = True
        self.stream.write(f"\r{self.label} {done}/{self.total}")
        self.stream.flush()

    def done(self) -> None:
        """Wipe the line so the answer that follows starts clean."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
