"""Free space where the proxy's records land, so an operator hears of a full disk before the
store starts failing writes (`store.min_free_bytes`; `/healthz` and the
``crawlguard_store_disk_*`` gauges).

SQLite: the filesystem of the database file. PostgreSQL: the database's disk is the server's
business; what the proxy writes locally is the spool (``<proxy.confdir>/store-spool``), so its
filesystem is the one watched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crawlguard.store import store_spool_dir

if TYPE_CHECKING:
    from crawlguard.config import Config

DISK_CHECK_SECONDS = 10.0  # how often the proxy refreshes the disk gauges


@dataclass(frozen=True, slots=True)
class DiskSpace:
    path: str  # the directory whose filesystem was measured
    free_bytes: int  # available to an unprivileged writer (statvfs f_bavail)
    total_bytes: int
    min_free_bytes: int

    @property
    def low(self) -> bool:
        return self.free_bytes < self.min_free_bytes

    def warning(self) -> str | None:
        """The operator's sentence when space is low, else None."""
        if not self.low:
            return None
        return (
            f"store disk low: {_size(self.free_bytes)} free of {_size(self.total_bytes)} on "
            f"the filesystem of {self.path} (store.min_free_bytes is "
            f"{_size(self.min_free_bytes)}); free space or lower store.retention_days"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def store_disk_path(store_url: str, confdir: str | Path) -> Path:
    """The directory whose filesystem holds what this proxy writes for `store_url`."""
    scheme, _, rest = store_url.partition("://")
    if scheme.lower() == "sqlite" and rest.startswith("/"):
        return Path(rest[1:]).expanduser().absolute().parent
    return store_spool_dir(confdir)


def disk_space(path: str | Path, min_free_bytes: int) -> DiskSpace:
    """statvfs of `path`, or of its nearest existing parent (the store's directory may not
    exist before its first write). OSError if none can be read."""
    here = Path(path).absolute()
    while not here.exists() and here.parent != here:
        here = here.parent
    st = os.statvfs(here)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return DiskSpace(str(here), free, total, min_free_bytes)


def store_disk_warning(cfg: Config) -> str | None:
    """`/healthz`'s warning line for `cfg`'s store, None when space is fine."""
    path = store_disk_path(cfg.store.url, cfg.proxy.confdir)
    try:
        return disk_space(path, cfg.store.min_free_bytes).warning()
    except OSError as exc:
        return f"cannot measure the store's disk at {path}: {exc.strerror or exc}"


__all__ = ["DISK_CHECK_SECONDS", "DiskSpace", "disk_space", "store_disk_path", "store_disk_warning"]
