"""Tenant authentication from `Proxy-Authorization: Basic` (SPEC: "Tenants and authentication").

Only token hashes are kept; every attempt hashes the presented token and compares it in
constant time against the tenant's digest (or a dummy one for unknown tenants), so an unknown
tenant and a wrong token look the same from outside.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

_DUMMY = hashlib.sha256(b"crawlguard: no such tenant").digest()


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
    """Maps credentials to a tenant object given {tenant_id: (token_sha256_digest, tenant)}."""

    def __init__(self, tenants: Mapping[str, tuple[bytes, T]]) -> None:
        self._tenants = dict(tenants)

    def authenticate(self, header: str | None) -> T | None:
        creds = parse_basic(header)
        if creds is None:
            return None
        user, password = creds
        digest, tenant = self._tenants.get(user, (_DUMMY, None))
        presented = hashlib.sha256(password.encode("utf-8")).digest()
        if hmac.compare_digest(presented, digest) and tenant is not None:
            return tenant
        return None

    def credential(self, tenant_id: str) -> bytes | None:
        """The token digest `tenant_id` authenticates with now (None: no such tenant). A tunnel
        keeps the one it was opened with and compares per request: a rotated token ends it."""
        entry = self._tenants.get(tenant_id)
        return entry[0] if entry is not None else None
