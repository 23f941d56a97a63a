"""The tenant's key directory (HTTP Message Signatures Directory, the draft's well-known URI)
and the signature on its response, as pure functions.

A verifier that follows `Signature-Agent` fetches this directory; the response is signed with
every published key (`tag="http-message-signatures-directory"`) so the verifier can tell the
directory holds the private halves of the keys it lists, and covers `"@authority";req` so a
directory cannot be replayed from another origin. It also covers `content-digest` (RFC 9530),
binding the signature to the body, as the reference implementation's published Ed25519 vector
does (cloudflare/web-bot-auth test_data/web_bot_auth_directory_response_v1.json).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import http_sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crawlguard.identity.keys import TenantKey, jwk, thumbprint
from crawlguard.identity.signing import (
    Component,
    Message,
    Params,
    sign_base,
    signature_base,
)

MEDIA_TYPE = "application/http-message-signatures-directory+json"
WELL_KNOWN_PATH = "/.well-known/http-message-signatures-directory"
DIRECTORY_TAG = "http-message-signatures-directory"
DIRECTORY_LIFETIME = 7 * 86400
"""The draft ("Directory Response Signature Lifetimes"): a short expires on the directory's
proof buys nothing and costs availability when the key set is redistributed."""
DIRECTORY_COMPONENTS: tuple[Component, ...] = (
    ("@authority", {"req": True}),
    ("content-digest", {}),
)


def directory_document(keys: Sequence[TenantKey]) -> dict[str, Any]:
    """A JWKS (RFC 7517 §5) of the published keys: each kid is its RFC 7638 thumbprint, so
    a verifier finds the key a signature's `keyid` names; nbf/exp tell it how long to cache."""
    entries = []
    for key in keys:
        entry: dict[str, Any] = {**jwk(key.public_key), "kid": key.kid, "nbf": key.created}
        if key.not_after is not None:
            entry["exp"] = key.not_after
        entries.append(entry)
    return {"keys": entries}


def directory_body(keys: Sequence[TenantKey]) -> bytes:
    """The response body: compact JSON, so Content-Digest is computed over the exact bytes."""
    return json.dumps(directory_document(keys), separators=(",", ":")).encode("utf-8")


def content_digest(body: bytes) -> str:
    """RFC 9530 §2: `sha-256=:<base64 digest>:`."""
    return http_sf.ser_dictionary({"sha-256": (hashlib.sha256(body).digest(), {})})


def sign_directory_response(
    private_keys: Sequence[Ed25519PrivateKey],
    *,
    authority: str,
    body: bytes,
    now: int,
    lifetime: int = DIRECTORY_LIFETIME,
    scheme: str = "https",
) -> dict[str, str]:
    """Headers for the directory response: Content-Type, Content-Digest and one signature per
    key (labels `binding`, `binding1`, ...; the draft's vector uses `binding`), each over
    `("@authority";req "content-digest")` with the draft's parameters in its order."""
    if not private_keys:
        raise ValueError("a directory response is signed by at least one key")
    if lifetime <= 0:
        raise ValueError("lifetime must be positive")
    digest = content_digest(body)
    request = Message("GET", authority, WELL_KNOWN_PATH, {}, scheme)
    response = Message(headers={"Content-Digest": digest}, scheme=scheme, request=request)
    inputs: dict[str, Any] = {}
    signatures: dict[str, Any] = {}
    for index, private_key in enumerate(private_keys):
        params: Params = {
            "created": int(now),
            "expires": int(now) + lifetime,
            "keyid": thumbprint(private_key.public_key()),
            "tag": DIRECTORY_TAG,
        }
        base = signature_base(DIRECTORY_COMPONENTS, params, response)
        label = f"binding{index}" if index else "binding"
        inputs[label] = (list(DIRECTORY_COMPONENTS), params)
        signatures[label] = (sign_base(private_key, base), {})
    return {
        "Content-Type": MEDIA_TYPE,
        "Content-Digest": digest,
        "Signature-Input": http_sf.ser_dictionary(inputs),
        "Signature": http_sf.ser_dictionary(signatures),
    }


def digest_matches(body: bytes, header: str) -> bool:
    """A verifier's check that the body is the one the covered Content-Digest names."""
    try:
        members = http_sf.parse(header.strip().encode("ascii"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError):
        return False
    entry = members.get("sha-256")
    return isinstance(entry, tuple) and entry[0] == hashlib.sha256(body).digest()
