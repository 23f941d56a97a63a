"""Files crawlguard writes that must never be seen half-written: private keys, the CA, the
config snapshot its workers read."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one step: a temporary file in the same directory, with
    `mode` from birth (0600: a secret is never readable by others, not even for a moment),
    written and fsync'd, renamed over `path`, then the directory fsync'd so the rename
    survives a crash. A reader sees the old file or the new one, never a part."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temp).unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


__all__ = ["write_atomic"]
