"""crawlguard.identity.keys: RFC 7638/8037 thumbprints, rotation with overlap, key files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from crawlguard.identity.keys import (
    KeyFileError,
    KeyRing,
    b64url_decode,
    jwk,
    jwk_thumbprint,
    public_key_from_jwk,
    thumbprint,
)

# RFC 8037 Appendix A.2/A.3: the example Ed25519 public key and its published thumbprint.
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

# RFC 9421 Appendix B.1.4 test-key-ed25519; its thumbprint is the keyid in the web-bot-auth
# reference vectors (cloudflare/web-bot-auth test_data).
RFC9421_ED25519_PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n"
    b"-----END PRIVATE KEY-----\n"
)


def test_rfc8037_a3_thumbprint() -> None:
    key = public_key_from_jwk({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X})
    assert jwk(key) == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert thumbprint(key) == RFC8037_THUMBPRINT
    # Members outside the required set do not change it (RFC 7638 §3.2).
    assert jwk_thumbprint({"x": RFC8037_X, "kid": "k", "crv": "Ed25519", "kty": "OKP"}) == (
        RFC8037_THUMBPRINT
    )


def test_rfc9421_test_key_thumbprint() -> None:
    private = load_pem_private_key(RFC9421_ED25519_PEM, None)
    assert isinstance(private, Ed25519PrivateKey)
    assert jwk(private.public_key())["x"] == "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"
    assert thumbprint(private.public_key()) == "poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U"


def test_b64url_decode_is_strict() -> None:
    assert b64url_decode("AQAB") == b"\x01\x00\x01"
    for bad in ("AQ==", "a+b/", "A"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


def test_first_use_generates_and_reuses() -> None:
    ring = KeyRing()
    first = ring.signing_key("acme", 1000)
    assert ring.signing_key("acme", 2000) == first
    assert [k.kid for k in ring.published("acme", 2000)] == [first.kid]
    assert ring.signing_key("other", 1000).kid != first.kid


def test_rotation_overlap_then_expiry() -> None:
    ring = KeyRing()
    old = ring.signing_key("acme", 1000)
    new = ring.rotate("acme", 5000, overlap=3600)
    assert ring.signing_key("acme", 5001).kid == new.kid
    assert {k.kid for k in ring.published("acme", 5000 + 3599)} == {old.kid, new.kid}
    assert [k.kid for k in ring.published("acme", 5000 + 3600)] == [new.kid]
    # Rotating again does not extend an already shorter overlap.
    ring.rotate("acme", 6000, overlap=86400)
    assert ring.keys("acme")[0].not_after == 8600


def test_revoke_removes_from_signing_and_publication() -> None:
    ring = KeyRing()
    old = ring.signing_key("acme", 1000)
    new = ring.rotate("acme", 2000, overlap=3600)
    ring.revoke("acme", new.kid)
    assert [k.kid for k in ring.published("acme", 2001)] == [old.kid]
    assert ring.signing_key("acme", 2001).kid == old.kid
    ring.revoke("acme", old.kid)
    assert ring.published("acme", 2001) == []
    fresh = ring.signing_key("acme", 2002)  # no live key left: a new one on use
    assert fresh.kid not in {old.kid, new.kid}
    with pytest.raises(KeyError):
        ring.revoke("acme", "no-such-kid")


def test_persistence_modes_and_reload(tmp_path: Path) -> None:
    directory = tmp_path / "identity"
    ring = KeyRing(directory)
    first = ring.signing_key("acme", 1000)
    second = ring.rotate("acme", 2000, overlap=60)
    ring.revoke("acme", first.kid)
    path = directory / "acme.json"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["acme.json", "acme.lock"]  # no temps
    again = KeyRing(directory)
    assert [(k.kid, k.revoked, k.not_after) for k in again.keys("acme")] == [
        (first.kid, True, 2060),
        (second.kid, False, None),
    ]
    assert again.signing_key("acme", 3000).kid == second.kid
    text = path.read_text()
    assert "BEGIN" not in text and '"d"' not in text  # raw base64url private key, own schema


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        ("{not json", "not valid JSON"),
        ('{"version": 99, "tenant": "acme", "keys": []}', "version 1"),
        ('{"version": 1, "tenant": "other", "keys": []}', "holds tenant"),
        ('{"version": 1, "tenant": "acme", "keys": {}}', "not a list"),
        ('{"version": 1, "tenant": "acme", "keys": [{"private_key": "!!"}]}', "private_key"),
    ],
)
def test_corrupt_files_are_named(tmp_path: Path, content: str, fault: str) -> None:
    (tmp_path / "acme.json").write_text(content)
    with pytest.raises(KeyFileError, match=fault) as info:
        KeyRing(tmp_path).keys("acme")
    assert "acme.json" in str(info.value)


def test_tampered_kid_and_types_are_refused(tmp_path: Path) -> None:
    KeyRing(tmp_path).signing_key("acme", 1000)
    path = tmp_path / "acme.json"
    document = json.loads(path.read_text())
    document["keys"][0]["kid"] = "forged"
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="thumbprint"):
        KeyRing(tmp_path).keys("acme")
    document["keys"][0]["created"] = "yesterday"
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="wrong types"):
        KeyRing(tmp_path).keys("acme")


@pytest.mark.parametrize("tenant", ["../x", "", ".hidden", "a/b", "a b"])
def test_tenant_names_that_cannot_be_files(tmp_path: Path, tenant: str) -> None:
    with pytest.raises(ValueError, match="key file"):
        KeyRing(tmp_path).signing_key(tenant, 1000)


def test_two_rings_on_one_directory_see_each_others_changes(tmp_path: Path) -> None:
    """Proxy workers and the CLI share the directory: a revocation by one stops the other."""
    worker, cli = KeyRing(tmp_path), KeyRing(tmp_path)
    first = worker.signing_key("acme", 1000)
    assert cli.signing_key("acme", 1000).kid == first.kid  # no second key made on first use
    new = cli.rotate("acme", 2000, overlap=60)
    assert worker.signing_key("acme", 2001).kid == new.kid
    cli.revoke("acme", new.kid)
    assert worker.signing_key("acme", 2002).kid == first.kid
    assert len(worker.keys("acme")) == 2
