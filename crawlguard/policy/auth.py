"""Tenant authentication from `Proxy-Authorization: Basic` (SPEC: "Tenants and authentication").

Only token hashes are kept; every attempt hashes the presented token and compares it in
constant time against the tenant's digests (or a dummy one for unknown tenants), so an unknown
tenant and a wrong token look the same from outside. A tenant has one current digest and,
after a rotation, old ones still accepted until a wall-clock time (the grace); the lookup is by
user id, O(1) in the number of tenants.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Mapping, Sequence

_DUMMY = hashlib.sha256(b"crawlguard: no such tenant").digest()
FOREVER = math.inf


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from a Basic credentials header, or None if absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


class Authenticator[T]:
    """Maps credentials to a tenant object.

    `tenants`: {tenant_id: (current token digest, tenant)}; `retired`: {tenant_id: [(old
    digest, accepted until time.time())]} for rotations in their grace. Expired entries are
    simply not accepted: no timer needs to remove them.
    """

    __slots__ = ("_retired", "_tenants")

    def __init__(
        self,
        tenants: Mapping[str, tuple[bytes, T]],
        retired: Mapping[str, Sequence[tuple[bytes, float]]] | None = None,
    ) -> None:
        self._tenants = dict(tenants)
        self._retired = {k: tuple(v) for k, v in (retired or {}).items() if v and k in tenants}

    def check(self, header: str | None, now: float | None = None) -> tuple[T, bytes] | None:
        """(tenant, the digest presented) for valid credentials, else None."""
        creds = parse_basic(header)
        if creds is None:
            return None
        user, password = creds
        presented = hashlib.sha256(password.encode("utf-8")).digest()
        tenant = self.accepts(user, presented, now)
        return (tenant, presented) if tenant is not None else None

    def authenticate(self, header: str | None) -> T | None:
        checked = self.check(header)
        return checked[0] if checked is not None else None

    def accepts(self, tenant_id: str, digest: bytes, now: float | None = None) -> T | None:
        """The tenant if `digest` is its current digest or a retired one still in its grace.
        Every candidate is compared (no early exit), in constant time each."""
        current, tenant = self._tenants.get(tenant_id, (_DUMMY, None))
        ok = hmac.compare_digest(digest, current)
        retired = self._retired.get(tenant_id)
        if retired:
            now = time.time() if now is None else now
            for old, until in retired:
                matched = hmac.compare_digest(digest, old)  # compared whatever `ok` is
                ok = ok or (matched and now < until)
        return tenant if ok and tenant is not None else None

    def entry(self, tenant_id: str) -> tuple[bytes, T] | None:
        """(current digest, tenant) as given: a rebuilt set reuses the unchanged ones."""
        return self._tenants.get(tenant_id)

    def credential(self, tenant_id: str) -> bytes | None:
        """The current token digest of `tenant_id` (None: no such tenant)."""
        entry = self._tenants.get(tenant_id)
        return entry[0] if entry is not None else None

    def retired(self, tenant_id: str) -> tuple[tuple[bytes, float], ...]:
        return self._retired.get(tenant_id, ())
