"""Logging that never blocks the event loop: handlers write from a background thread.

The proxy writes one JSON line per violation record (stdout) and its log (stderr). A write to a
pipe that nobody reads fast enough blocks, and on the event loop that would stall every
tenant's requests. So the loggers only put records on an in-memory queue (`QueueHandler`: no
I/O) and a `QueueListener` thread per stream does the writing. The queues are unbounded: a
stalled reader costs memory, never latency, and loses no line. `stop_logging` (atexit) drains
them before the process ends.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener

VIOLATIONS = "crawlguard.violations"
_listeners: list[QueueListener] = []


def _queued(target: logging.Handler) -> QueueHandler:
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(q, target, respect_handler_level=True)
    listener.start()
    _listeners.append(listener)
    return QueueHandler(q)


def setup_logging(*, name: str = "%(name)s") -> None:
    """stderr: the log, WARNING and up (crawlguard's own INFO too); stdout: the JSON lines of
    violation records, one per record. `name`: how a line names its logger (a `--workers N`
    worker adds its index). Idempotent: a second call replaces the first."""
    stop_logging()
    log = logging.StreamHandler(sys.stderr)
    log.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name}: %(message)s"))
    lines = logging.StreamHandler(sys.stdout)
    lines.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [_queued(log)]
    root.setLevel(logging.WARNING)
    logging.getLogger("crawlguard").setLevel(logging.INFO)
    violations = logging.getLogger(VIOLATIONS)
    violations.handlers[:] = [_queued(lines)]
    violations.propagate = False


def stop_logging() -> None:
    """Write out what is queued and stop the writer threads."""
    while _listeners:
        _listeners.pop().stop()


atexit.register(stop_logging)
