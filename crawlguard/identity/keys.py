"""Per-tenant Ed25519 keys: JWK form, RFC 7638 thumbprints, rotation and on-disk persistence.

The thumbprint is the `keyid` a verifier looks up in the tenant's key directory, so it must be
computed exactly as RFC 7638 §3 says over the RFC 8037 §2 OKP members; anything else and a
verifier fetching the directory cannot match the signature to its key.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from crawlguard.files import write_atomic

FILE_VERSION = 1
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class KeyFileError(ValueError):
    """A tenant's key file that cannot be trusted; the message names the file and the fault."""


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2), the encoding JWK members and thumbprints use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of b64url: refuses padding and characters outside the url-safe alphabet."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError(f"not unpadded base64url: {text!r}")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public key as an RFC 8037 §2 OKP JWK: only the required members, no private `d`."""
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw_public(public_key))}


def jwk_thumbprint(key: dict[str, Any]) -> str:
    """RFC 7638 §3 thumbprint of an OKP JWK: SHA-256 over the required members (crv, kty, x)
    in lexicographic order with no whitespace, base64url without padding (RFC 8037 §2)."""
    if key.get("kty") != "OKP":
        raise ValueError("only OKP (RFC 8037) keys are supported")
    canonical = json.dumps(
        {"crv": key["crv"], "kty": key["kty"], "x": key["x"]},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def thumbprint(public_key: Ed25519PublicKey) -> str:
    """The key's `keyid` (issue 23): RFC 7638 thumbprint of its RFC 8037 JWK."""
    return jwk_thumbprint(jwk(public_key))


def public_key_from_jwk(key: dict[str, Any]) -> Ed25519PublicKey:
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519" or not isinstance(key.get("x"), str):
        raise ValueError("not an Ed25519 OKP JWK")
    return Ed25519PublicKey.from_public_bytes(b64url_decode(key["x"]))


@dataclass(frozen=True)
class TenantKey:
    """One key of a tenant. `not_after` is when it leaves publication (None: until rotated);
    a revoked key is kept on disk so a reload cannot resurrect it, but is never used."""

    private_key: Ed25519PrivateKey
    created: int
    not_after: int | None = None
    revoked: bool = False

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def kid(self) -> str:
        return thumbprint(self.public_key)

    def live(self, now: float) -> bool:
        return not self.revoked and (self.not_after is None or now < self.not_after)


def _private_raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _to_record(key: TenantKey) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "private_key": b64url(_private_raw(key.private_key)),
        "created": key.created,
        "not_after": key.not_after,
        "revoked": key.revoked,
    }


def _from_record(record: Any, where: str) -> TenantKey:
    if not isinstance(record, dict):
        raise KeyFileError(f"{where}: a key entry is not an object")
    try:
        private = Ed25519PrivateKey.from_private_bytes(b64url_decode(record["private_key"]))
    except (KeyError, TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"{where}: a key's private_key is missing or not a raw Ed25519 key ({exc})"
        ) from exc
    created, not_after, revoked = (
        record.get("created"),
        record.get("not_after"),
        record.get("revoked"),
    )
    if (
        type(created) is not int
        or not (not_after is None or type(not_after) is int)
        or type(revoked) is not bool
    ):
        raise KeyFileError(f"{where}: a key's created/not_after/revoked have the wrong types")
    key = TenantKey(private, created, not_after, revoked)
    if record.get("kid") != key.kid:
        raise KeyFileError(f"{where}: kid {record.get('kid')!r} is not the thumbprint of its key")
    return key


class KeyRing:
    """Every tenant's keys. The newest live key signs; older live keys stay published so
    signatures made just before a rotation still verify (issue 23: rotation with overlap).

    With a `directory`, each tenant's keys live in `<directory>/<tenant>.json` (0600, directory
    0700), written atomically so a crash mid-write leaves the previous file, never half a key.
    Several processes (proxy workers, the CLI) may share the directory: changes happen under
    an exclusive lock on `<tenant>.lock` after re-reading the file, and every read notices a
    replaced file, so a revocation by one process stops the others signing at once.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._cache: dict[str, tuple[tuple[int, int, int] | None, list[TenantKey]]] = {}

    def keys(self, tenant: str) -> list[TenantKey]:
        """All of a tenant's keys, revoked and expired included, oldest first."""
        path = self._path(tenant)
        if path is None:
            return list(self._cache.get(tenant, (None, []))[1])
        stamp = _stamp(path)
        cached = self._cache.get(tenant)
        if cached is None or cached[0] != stamp:
            cached = (stamp, self._load(tenant, path) if stamp is not None else [])
            self._cache[tenant] = cached
        return list(cached[1])

    def published(self, tenant: str, now: float) -> list[TenantKey]:
        """The keys a verifier may still meet: not revoked and not past their overlap."""
        return [key for key in self.keys(tenant) if key.live(now)]

    def signing_key(self, tenant: str, now: float) -> TenantKey:
        """The newest live key; a tenant without one gets a fresh key (keys on first use)."""
        live = self.published(tenant, now)
        if live:
            return max(live, key=lambda key: key.created)

        def first_use(keys: list[TenantKey]) -> tuple[list[TenantKey], TenantKey]:
            live = [key for key in keys if key.live(now)]
            if live:  # another process made one while we waited for the lock
                return keys, max(live, key=lambda key: key.created)
            key = TenantKey(Ed25519PrivateKey.generate(), int(now))
            return [*keys, key], key

        return self._change(tenant, first_use)

    def rotate(self, tenant: str, now: float, overlap: float) -> TenantKey:
        """A new key signs from now; every older live key stays published until now+overlap."""
        if overlap < 0:
            raise ValueError("overlap must not be negative")
        until = int(now + overlap)

        def rotated(keys: list[TenantKey]) -> tuple[list[TenantKey], TenantKey]:
            aged = [
                replace(key, not_after=until)
                if key.live(now) and (key.not_after is None or key.not_after > until)
                else key
                for key in keys
            ]
            key = TenantKey(Ed25519PrivateKey.generate(), int(now))
            return [*aged, key], key

        return self._change(tenant, rotated)

    def revoke(self, tenant: str, kid: str) -> None:
        """Removes the key from signing and publication at once (a leaked key cannot wait)."""

        def revoked(keys: list[TenantKey]) -> tuple[list[TenantKey], None]:
            if not any(key.kid == kid for key in keys):
                raise KeyError(f"tenant {tenant!r} has no key {kid!r}")
            return [replace(key, revoked=True) if key.kid == kid else key for key in keys], None

        self._change(tenant, revoked)

    def _change[T](
        self, tenant: str, change: Callable[[list[TenantKey]], tuple[list[TenantKey], T]]
    ) -> T:
        """Read-modify-write under the tenant's lock, from the file as it is now."""
        path = self._path(tenant)
        if path is None:
            keys, result = change(self.keys(tenant))
            self._cache[tenant] = (None, keys)
            return result
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        lock_fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._cache.pop(tenant, None)
            keys, result = change(self.keys(tenant))
            document = {
                "version": FILE_VERSION,
                "tenant": tenant,
                "keys": [_to_record(key) for key in keys],
            }
            write_atomic(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
            self._cache[tenant] = (_stamp(path), keys)
            return result
        finally:
            os.close(lock_fd)  # closing releases the lock

    def _path(self, tenant: str) -> Path | None:
        if not _TENANT_NAME.match(tenant):
            raise ValueError(f"tenant name {tenant!r} cannot name a key file")
        return None if self._directory is None else self._directory / f"{tenant}.json"

    def _load(self, tenant: str, path: Path) -> list[TenantKey]:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
            raise KeyFileError(f"{path}: not a version {FILE_VERSION} key file")
        if document.get("tenant") != tenant:
            raise KeyFileError(f"{path}: holds tenant {document.get('tenant')!r}, not {tenant!r}")
        records = document.get("keys")
        if not isinstance(records, list):
            raise KeyFileError(f"{path}: 'keys' is not a list")
        return [_from_record(record, str(path)) for record in records]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced (a rename gives a new inode)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)
