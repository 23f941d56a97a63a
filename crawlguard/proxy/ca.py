"""crawlguard's own CA: `CN=crawlguard CA, O=crawlguard` in mitmproxy's confdir.

mitmproxy creates `CN=mitmproxy, O=mitmproxy` the first time it finds no CA in its confdir.
crawlguard creates its CA first, under mitmproxy's file names (so mitmproxy loads it and every
path crawlers were told to trust stays the same): `crawlguard run` before its master reads the
confdir, the mitmdump addon when its config loads (see `replace_fresh_default_ca` for the case
where mitmdump has read the confdir first).

An existing CA is never replaced: crawlers already trust it. To rotate, stop the proxy, delete
the confdir's `mitmproxy-ca*` files and start again (then hand the new certificate out).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, as mitmproxy itself takes none
    fcntl = None  # type: ignore[assignment]

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from crawlguard.files import write_atomic

log = logging.getLogger("crawlguard")

BASENAME = "mitmproxy"  # mitmproxy's file names (mitmproxy.addons.tlsconfig.CONF_BASENAME)
ORGANIZATION = "crawlguard"
COMMON_NAME = "crawlguard CA"
DEFAULT_KEY_SIZE = 2048  # mitmproxy's key_size option default
LOCK_NAME = "crawlguard-ca.lock"


def key_file(confdir: str | Path) -> Path:
    """CA key and certificate (PEM): what mitmproxy loads, and what says a CA exists."""
    return Path(confdir).expanduser() / f"{BASENAME}-ca.pem"


def cert_file(confdir: str | Path) -> Path:
    """The CA certificate alone (PEM): what crawlers trust."""
    return Path(confdir).expanduser() / f"{BASENAME}-ca-cert.pem"


def ca_files(confdir: str | Path) -> list[Path]:
    """Every file mitmproxy's CertStore.create_store writes, in the order crawlguard writes
    them: the key file last, as it is the one whose presence means "there is a CA"."""
    d = Path(confdir).expanduser()
    names = ("ca-cert.pem", "ca-cert.cer", "ca-cert.p12", "ca.p12", "dhparam.pem", "ca.pem")
    return [d / f"{BASENAME}-{name}" for name in names]


def subject(cert: x509.Certificate) -> str:
    """``CN=crawlguard CA, O=crawlguard``: the subject in the order it is encoded."""
    return ", ".join(attr.rfc4514_string() for attr in cert.subject)


def load_cert(confdir: str | Path) -> x509.Certificate:
    """The CA certificate mitmproxy uses (the first one in the key file)."""
    return x509.load_pem_x509_certificates(key_file(confdir).read_bytes())[0]


def is_mitmproxy_default(cert: x509.Certificate) -> bool:
    """A CA mitmproxy made itself (`CN=mitmproxy, O=mitmproxy`)."""
    return _attr(cert, NameOID.COMMON_NAME) == BASENAME and (
        _attr(cert, NameOID.ORGANIZATION_NAME) == BASENAME
    )


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def ensure_ca(confdir: str | Path, key_size: int = DEFAULT_KEY_SIZE) -> bool:
    """Create crawlguard's CA in `confdir` unless a CA is already there; True if created.

    Safe against concurrent callers (a lock file in the confdir): exactly one creates it, and
    mitmproxy never sees a key file without the certificate files beside it.
    """
    with _locked(confdir):
        if key_file(confdir).exists():
            return False
        _write_ca(confdir, key_size)
        return True


def replace_fresh_default_ca(
    confdir: str | Path, since: float, key_size: int = DEFAULT_KEY_SIZE
) -> bool:
    """Replace a mitmproxy-named CA that was created at or after `since` (this process's start)
    by crawlguard's; True if replaced.

    For mitmdump with ``--set confdir=...``: mitmproxy applies that option, and so creates its
    CA, before it loads any script. A CA made by this very process before it listens has not
    been handed to anyone, so naming it crawlguard's breaks nothing; any older CA is kept.
    """
    with _locked(confdir):
        files = [p for p in ca_files(confdir) if p.exists()]
        if not key_file(confdir).exists():
            _write_ca(confdir, key_size)
            return True
        try:
            if not is_mitmproxy_default(load_cert(confdir)):
                return False
        except (OSError, ValueError):
            return False  # not ours to judge: mitmproxy reports a broken CA in its own words
        if any(p.stat().st_mtime < since for p in files):
            return False
        log.info("replacing the default CA mitmproxy has just created in this process")
        _write_ca(confdir, key_size)
        return True


def process_start_time() -> float | None:
    """When this process started (Unix time, at most a clock tick early), from Linux's /proc;
    None where that is not available."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, after comm
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


@contextlib.contextmanager
def _locked(confdir: str | Path) -> Iterator[None]:
    d = Path(confdir).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_ca(confdir: str | Path, key_size: int) -> None:
    """The files mitmproxy's CertStore.create_store writes, with crawlguard's subject; each
    written to a temporary name and renamed into place, the key file last."""
    from mitmproxy.certs import DEFAULT_DHPARAM, create_ca

    key, cert = create_ca(organization=ORGANIZATION, cn=COMMON_NAME, key_size=key_size)
    pem_key = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    name = COMMON_NAME.encode()
    no_encryption = serialization.NoEncryption()
    contents: dict[str, tuple[bytes, bool]] = {  # name -> (bytes, holds the private key)
        "ca-cert.pem": (pem_cert, False),
        "ca-cert.cer": (pem_cert, False),  # the same PEM, for Android
        "ca-cert.p12": (
            pkcs12.serialize_key_and_certificates(name, None, cert, None, no_encryption),
            False,
        ),
        "ca.p12": (  # key and certificate, for Windows
            pkcs12.serialize_key_and_certificates(name, key, cert, None, no_encryption),
            True,
        ),
        "dhparam.pem": (DEFAULT_DHPARAM, False),
        "ca.pem": (pem_key + pem_cert, True),
    }
    for path in ca_files(confdir):
        data, secret = contents[path.name.removeprefix(f"{BASENAME}-")]
        write_atomic(path, data, mode=0o600 if secret else 0o644)  # keys: owner only
    log.info("created crawlguard's CA (%s) in %s", subject(cert), Path(confdir).expanduser())


__all__ = [
    "COMMON_NAME",
    "ORGANIZATION",
    "ca_files",
    "cert_file",
    "ensure_ca",
    "is_mitmproxy_default",
    "key_file",
    "load_cert",
    "process_start_time",
    "replace_fresh_default_ca",
    "subject",
]
