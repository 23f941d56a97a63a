"""crawlguard.identity.signing and .directory: RFC 9421 and web-bot-auth vectors, round trips,
tampering, expiry, and the signed key directory."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import http_sf
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard.identity.directory import (
    DIRECTORY_LIFETIME,
    DIRECTORY_TAG,
    MEDIA_TYPE,
    WELL_KNOWN_PATH,
    content_digest,
    digest_matches,
    directory_body,
    directory_document,
    sign_directory_response,
)
from crawlguard.identity.keys import KeyRing, public_key_from_jwk, thumbprint
from crawlguard.identity.signing import (
    MAX_LIFETIME,
    Message,
    SignatureError,
    canonical_authority,
    free_label,
    sign,
    sign_base,
    signature_agent_value,
    signature_base,
    verify,
    verify_message,
)

# RFC 9421 Appendix B.1.4 test-key-ed25519.
RFC9421_ED25519_PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n"
    b"-----END PRIVATE KEY-----\n"
)
TEST_KID = "poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U"


def rfc_key() -> Ed25519PrivateKey:
    key = load_pem_private_key(RFC9421_ED25519_PEM, None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- published vectors -------------------------------------------------------------------


def test_rfc9421_b26_base_and_signature() -> None:
    """RFC 9421 Appendix B.2.6, the test-request (Appendix B.2) with test-key-ed25519."""
    message = Message(
        "POST",
        "example.com",
        "/foo?param=Value&Pet=dog",
        {
            "Host": "example.com",
            "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
            "Content-Type": "application/json",
            "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrI"
            "iYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            "Content-Length": "18",
        },
    )
    names = ["date", "@method", "@path", "@authority", "content-type", "content-length"]
    components = [(name, {}) for name in names]
    params = {"created": 1618884473, "keyid": "test-key-ed25519"}
    base = signature_base(components, params, message)
    assert base == (
        '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        '"@method": POST\n'
        '"@path": /foo\n'
        '"@authority": example.com\n'
        '"content-type": application/json\n'
        '"content-length": 18\n'
        '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
        '"content-length");created=1618884473;keyid="test-key-ed25519"'
    )
    assert b64(sign_base(rfc_key(), base)) == (
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
    )


# The Ed25519 vectors published with the web-bot-auth reference implementation
# (cloudflare/web-bot-auth, packages/web-bot-auth/test/test_data/web_bot_auth_architecture_v2.json):
# target https://example.com/path/to/resource, test-key-ed25519, created 1735689600,
# expires 4889289600.
WBA_VECTORS = [
    (
        "sig1",
        None,
        "zIW8+cdmA3vdYagbxojpONwa/l0EKJ/O3/wD486VvsQjO/RxPaSt6ZxvQaMcQzNnqKN/mQ6hpGiFro2L2qkz5A==",
        "QKN4fTdIYfh82fvoZCQiQA1weuozfCS/Led2zTMbewMMqH8PI2Wsy/5c4ao6B6D09nraNQdBNOADg8aM1MqfCg==",
    ),
    (
        "sig2",
        "agent2",
        "n9p433xm+NJ3ph3upfBIGmsuwHw387YV7Q/F+6BSpGCVjYCqQw6rznNA8PVVLySrAWsv0hQtFioQb6E1YsauiA==",
        "RdNFx5Bj6au3YgAMQL/RzmUlZE8QZLIaXGRpw985hWnwPfMxT228NMk6ehRS1PSl4e8PhbNZACSanGdhEwYCCg==",
    ),
]


@pytest.mark.parametrize(("label", "agent_key", "nonce", "signature"), WBA_VECTORS)
def test_web_bot_auth_reference_vectors(
    label: str, agent_key: str | None, nonce: str, signature: str
) -> None:
    headers = {}
    components: list[tuple[str, dict[str, str | int | bool]]] = [("@authority", {})]
    if agent_key is not None:
        headers["Signature-Agent"] = signature_agent_value(
            agent_key, "https://signature-agent.test"
        )
        assert headers["Signature-Agent"] == 'agent2="https://signature-agent.test"'
        components.append(("signature-agent", {"key": agent_key}))
    params = {
        "created": 1735689600,
        "keyid": TEST_KID,
        "alg": "ed25519",
        "expires": 4889289600,
        "nonce": nonce,
        "tag": "web-bot-auth",
    }
    message = Message("GET", "example.com", "/path/to/resource", headers)
    base = signature_base(components, params, message)
    assert b64(sign_base(rfc_key(), base)) == signature
    published_input = http_sf.ser_dictionary({label: (components, params)})
    headers.update({"Signature-Input": published_input, "Signature": f"{label}=:{signature}:"})
    result = verify_message(
        Message("GET", "example.com", "/path/to/resource", headers),
        lambda agent, kid: rfc_key().public_key() if kid == TEST_KID else None,
        now=1735689600,
    )
    assert result.valid, result.reason
    assert result.label == label
    assert result.agent == (None if agent_key is None else "https://signature-agent.test")


def test_draft_legacy_sf_string_vector() -> None:
    """The draft's "Legacy Signature-Agent, sf-string" Ed25519 vector: a verifier may still
    meet the bare-string form, covered as plain "signature-agent"."""
    nonce = (
        "e8N7S2MFd/qrd6T2R3tdfAuuANngKI7LFtKYI/vowzk4lAZYadIX6wW25MwG7DCT9RUKAJ0qVkU0mEeLElW1qg=="
    )
    params = {
        "created": 1735689600,
        "keyid": TEST_KID,
        "alg": "ed25519",
        "expires": 1735693200,
        "nonce": nonce,
        "tag": "web-bot-auth",
    }
    headers = {"Signature-Agent": '"https://signature-agent.test"'}
    message = Message("GET", "example.com", "/path/to/resource", headers)
    components = [("@authority", {}), ("signature-agent", {})]
    base = signature_base(components, params, message)
    assert base.splitlines()[1] == '"signature-agent": "https://signature-agent.test"'
    assert b64(sign_base(rfc_key(), base)) == (
        "jdq0SqOwHdyHr9+r5jw3iYZH6aNGKijYp/EstF4RQTQdi5N5YYKrD+mCT1HA1nZDsi6nJKuHxUi/5Syp3rLWBA=="
    )


DIRECTORY_BODY = (
    b'{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"' + TEST_KID.encode() + b'",'
    b'"x":"JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs","use":"sig"}]}'
)


def test_draft_signed_directory_response_vector() -> None:
    """The draft's "Signed Directory Response" vector, produced by sign_directory_response."""
    headers = sign_directory_response(
        [rfc_key()],
        authority="signature-agent.test",
        body=DIRECTORY_BODY,
        now=1735689600,
        lifetime=4889289600 - 1735689600,
    )
    assert headers == {
        "Content-Type": MEDIA_TYPE,
        "Content-Digest": "sha-256=:CADMT2aBdV/rqQr/NIru64ERQkCobVvllA4V0fLFDu0=:",
        "Signature-Input": 'binding=("@authority";req "content-digest");created=1735689600;'
        f'expires=4889289600;keyid="{TEST_KID}";tag="http-message-signatures-directory"',
        "Signature": "binding=:l6P8R67tm3kujAxbHWio7ll01qrEZ0dKD/WWlGhNYEmTnFZM8Wt0VQ9zqGfvo7T/"
        "UMkBxsigzChM1Gpz7gOVBg==:",
    }


def test_reference_directory_response_vector() -> None:
    """cloudflare/web-bot-auth web_bot_auth_directory_response_v1.json: same response, with
    `alg` and another parameter order, so another base and signature."""
    request = Message("GET", "signature-agent.test", WELL_KNOWN_PATH)
    response = Message(headers={"Content-Digest": content_digest(DIRECTORY_BODY)}, request=request)
    params = {
        "created": 1735689600,
        "keyid": TEST_KID,
        "alg": "ed25519",
        "expires": 4889289600,
        "tag": DIRECTORY_TAG,
    }
    base = signature_base([("@authority", {"req": True}), ("content-digest", {})], params, response)
    assert base == (
        '"@authority";req: signature-agent.test\n'
        '"content-digest": sha-256=:CADMT2aBdV/rqQr/NIru64ERQkCobVvllA4V0fLFDu0=:\n'
        '"@signature-params": ("@authority";req "content-digest");created=1735689600;'
        f'keyid="{TEST_KID}";alg="ed25519";expires=4889289600;'
        'tag="http-message-signatures-directory"'
    )
    assert b64(sign_base(rfc_key(), base)) == (
        "yiHq0TXrbpzbmlttAQMpYoAufitFJUWuNsakB7QQMoN0EHbo5o51bZRVR8az/ptTWCwllix9clrKXfGKwdPzBg=="
    )


# --- components ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "scheme", "expected"),
    [
        ("Example.COM", "https", "example.com"),
        ("example.com:443", "https", "example.com"),
        ("example.com:80", "http", "example.com"),
        ("example.com:443", "http", "example.com:443"),
        ("example.com:8443", "https", "example.com:8443"),
        ("[2001:DB8::1]:443", "https", "[2001:db8::1]"),
        ("[2001:db8::1]:8080", "https", "[2001:db8::1]:8080"),
    ],
)
def test_canonical_authority(authority: str, scheme: str, expected: str) -> None:
    assert canonical_authority(authority, scheme) == expected


def test_signature_agent_dictionary_member() -> None:
    assert signature_agent_value("sig1", "https://acme.agents.example") == (
        'sig1="https://acme.agents.example"'
    )
    for bad in ("http://a.example", "https://a.example/keys", "https://u@a.example", "a.example"):
        with pytest.raises(SignatureError, match="https origin"):
            signature_agent_value("sig1", bad)


def test_missing_member_and_duplicate_component() -> None:
    message = Message("GET", "a.example", "/", {"Signature-Agent": 'sig1="https://x"'})
    with pytest.raises(SignatureError, match="no member"):
        signature_base([("signature-agent", {"key": "sig2"})], {}, message)
    with pytest.raises(SignatureError, match="twice"):
        signature_base([("@path", {}), ("@path", {})], {}, message)
    with pytest.raises(SignatureError, match="no 'date'"):
        signature_base([("date", {})], {}, message)


# --- sign / verify ---------------------------------------------------------------------

NOW = 1_800_000_000
ORIGIN = "https://acme.agents.example"


def signed(key: Ed25519PrivateKey, **overrides: object) -> dict[str, str]:
    args: dict[str, object] = {
        "method": "GET",
        "authority": "shop.example",
        "path": "/items/1",
        "headers": {"User-Agent": "acmebot/1.0"},
        "agent_origin": ORIGIN,
        "now": NOW,
    }
    args.update(overrides)
    return sign(key, **args)  # type: ignore[arg-type]


def lookup(
    key: Ed25519PrivateKey, origin: str = ORIGIN
) -> Callable[[str | None, str], Ed25519PublicKey | None]:
    """A verifier's cache, keyed on the (URL, keyid) pair as the draft requires."""
    public = key.public_key()
    kid = thumbprint(public)

    def find(agent: str | None, wanted: str) -> Ed25519PublicKey | None:
        return public if (agent, wanted) == (origin, kid) else None

    return find


def test_sign_headers_shape() -> None:
    key = rfc_key()
    headers = signed(key, nonce="fixed")
    assert headers["Signature-Agent"] == f'sig1="{ORIGIN}"'
    assert headers["Signature-Input"] == (
        'sig1=("@authority" "@method" "@path" "signature-agent";key="sig1")'
        f';created={NOW};expires={NOW + MAX_LIFETIME};keyid="{TEST_KID}";alg="ed25519"'
        ';nonce="fixed";tag="web-bot-auth"'
    )
    assert headers["Signature"].startswith("sig1=:") and headers["Signature"].endswith(":")


def test_random_nonces_are_64_bytes_and_differ() -> None:
    key = Ed25519PrivateKey.generate()
    inputs = [http_sf.parse(signed(key)["Signature-Input"].encode(), tltype="dictionary")]
    inputs.append(http_sf.parse(signed(key)["Signature-Input"].encode(), tltype="dictionary"))
    nonces = [entry["sig1"][1]["nonce"] for entry in inputs]
    assert nonces[0] != nonces[1]
    assert all(len(base64.b64decode(nonce)) == 64 for nonce in nonces)


def test_round_trip_and_tampering() -> None:
    key = Ed25519PrivateKey.generate()
    headers = {"User-Agent": "acmebot/1.0", **signed(key)}
    ok = verify("GET", "shop.example", "/items/1", headers, lookup(key), NOW)
    assert ok.valid and ok.agent == ORIGIN and ok.keyid == thumbprint(key.public_key())
    assert verify("GET", "SHOP.example:443", "/items/1?q=1", headers, lookup(key), NOW).valid
    bad = {
        "method": verify("POST", "shop.example", "/items/1", headers, lookup(key), NOW),
        "authority": verify("GET", "evil.example", "/items/1", headers, lookup(key), NOW),
        "path": verify("GET", "shop.example", "/items/2", headers, lookup(key), NOW),
        "agent": verify(
            "GET",
            "shop.example",
            "/items/1",
            {**headers, "Signature-Agent": 'sig1="https://evil.example"'},
            lambda agent, kid: key.public_key(),  # a lookup that ignores the URL
            NOW,
        ),
        "signature": verify(
            "GET",
            "shop.example",
            "/items/1",
            {**headers, "Signature": signed(key, path="/other")["Signature"]},
            lookup(key),
            NOW,
        ),
    }
    for what, result in bad.items():
        assert not result.valid, what
        assert result.reason == "signature does not match", what
    moved = {**headers, "Signature-Agent": 'sig1="https://evil.example"'}
    result = verify("GET", "shop.example", "/items/1", moved, lookup(key), NOW)
    assert result.reason.startswith("unknown keyid")


def test_expiry_future_and_wrong_key() -> None:
    key = Ed25519PrivateKey.generate()
    headers = signed(key, lifetime=60)
    args = ("GET", "shop.example", "/items/1", headers)
    assert verify(*args, lookup(key), NOW + 59).valid
    assert verify(*args, lookup(key), NOW + 60).reason == "expired"
    assert verify(*args, lookup(key), NOW - 61).reason == "created is in the future"
    other = Ed25519PrivateKey.generate()
    assert verify(*args, lookup(other), NOW).reason.startswith("unknown keyid")
    assert not verify(*args, lambda agent, kid: other.public_key(), NOW).valid
    # The key is known, but for another URL: the pair does not match (draft, key lookup).
    assert verify(*args, lookup(key, "https://other.example"), NOW).reason.startswith("unknown")
    with pytest.raises(ValueError):
        signed(key, lifetime=MAX_LIFETIME + 1)


def test_profile_requirements_enforced() -> None:
    key = Ed25519PrivateKey.generate()
    headers = signed(key, nonce="n")
    weaker = headers["Signature-Input"].replace(' "@path"', "")
    result = verify(
        "GET", "shop.example", "/items/1", {**headers, "Signature-Input": weaker}, lookup(key), NOW
    )
    assert not result.valid and "@path" in result.reason
    wrong_tag = headers["Signature-Input"].replace("web-bot-auth", "other")
    result = verify(
        "GET",
        "shop.example",
        "/items/1",
        {**headers, "Signature-Input": wrong_tag},
        lookup(key),
        NOW,
    )
    assert result.reason == "no signature with tag 'web-bot-auth'"
    other_alg = headers["Signature-Input"].replace('alg="ed25519"', 'alg="hmac-sha256"')
    result = verify(
        "GET",
        "shop.example",
        "/items/1",
        {**headers, "Signature-Input": other_alg},
        lookup(key),
        NOW,
    )
    assert "alg" in result.reason
    assert verify("GET", "shop.example", "/", {}, lookup(key), NOW).reason.startswith(
        "no Signature"
    )
    backwards = headers["Signature-Input"].replace(
        f"expires={NOW + MAX_LIFETIME}", f"expires={NOW}"
    )
    result = verify(
        "GET",
        "shop.example",
        "/items/1",
        {**headers, "Signature-Input": backwards},
        lookup(key),
        NOW - 1,
    )
    assert result.reason == "expires is not after created"
    no_agent = {k: v for k, v in headers.items() if k != "Signature-Agent"}
    result = verify("GET", "shop.example", "/items/1", no_agent, lookup(key), NOW)
    assert not result.valid and "signature-agent" in result.reason


def test_an_existing_signature_is_kept() -> None:
    tenant_key, platform_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    tenant = signed(tenant_key, agent_origin="https://tenant.example")
    both = signed(platform_key, headers=tenant, label="sig2")
    assert both["Signature-Agent"] == 'sig1="https://tenant.example", sig2="' + ORIGIN + '"'
    for label, key in (("sig1", tenant_key), ("sig2", platform_key)):
        origin = "https://tenant.example" if label == "sig1" else ORIGIN
        result = verify_message(
            Message("GET", "shop.example", "/items/1", both), lookup(key, origin), NOW, label=label
        )
        assert result.valid, (label, result.reason)
    with pytest.raises(SignatureError, match="already has a member"):
        signed(platform_key, headers=tenant)
    assert free_label({"User-Agent": "x"}) == "sig1"
    assert free_label(tenant) == "sig2"
    assert free_label(both) == "sig3"


def test_non_ascii_values_are_refused() -> None:
    with pytest.raises(SignatureError, match="non-ASCII"):
        signed(Ed25519PrivateKey.generate(), path="/caf\u00e9")


HOSTS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,8}){1,2}", fullmatch=True)
PATHS = st.lists(
    st.text(st.sampled_from("abcXYZ019-._~%!$&'()*+,;=:@"), min_size=0, max_size=12), max_size=5
).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=60, deadline=None)
@given(
    host=HOSTS,
    port=st.sampled_from([None, 443, 8080]),
    path=PATHS,
    index=st.integers(min_value=0),
    byte=st.sampled_from("aZ9/-%~"),
)
def test_sign_verify_property(
    host: str, port: int | None, path: str, index: int, byte: str
) -> None:
    key = Ed25519PrivateKey.generate()
    authority = host if port is None else f"{host}:{port}"
    headers = signed(key, authority=authority, path=path)
    assert verify("GET", authority, path, headers, lookup(key), NOW).valid
    position = index % len(path)
    changed = path[:position] + byte + path[position + 1 :]
    if changed != path:
        assert not verify("GET", authority, changed, headers, lookup(key), NOW).valid


# --- directory -------------------------------------------------------------------------


def test_directory_document_and_self_signature() -> None:
    ring = KeyRing()
    old = ring.signing_key("acme", 1000)
    new = ring.rotate("acme", 2000, overlap=600)
    published = ring.published("acme", 2100)
    document = directory_document(published)
    assert [entry["kid"] for entry in document["keys"]] == [old.kid, new.kid]
    assert document["keys"][0]["exp"] == 2600 and "exp" not in document["keys"][1]
    for entry in document["keys"]:
        assert thumbprint(public_key_from_jwk(entry)) == entry["kid"]
    body = directory_body(published)
    assert json.loads(body) == document
    headers = sign_directory_response(
        [key.private_key for key in published], authority="acme.id.example", body=body, now=2100
    )
    assert headers["Content-Type"] == MEDIA_TYPE
    assert headers["Content-Digest"] == content_digest(body) and digest_matches(
        body, headers["Content-Digest"]
    )
    assert not digest_matches(body + b" ", headers["Content-Digest"])
    keys = {key.kid: key.public_key for key in published}

    def from_directory(agent: str | None, kid: str) -> Ed25519PublicKey | None:
        return keys.get(kid)

    request = Message("GET", "acme.id.example", WELL_KNOWN_PATH)
    for label in ("binding", "binding1"):
        response = Message(headers=headers, request=request)
        result = verify_message(response, from_directory, 2100, tag=DIRECTORY_TAG, label=label)
        assert result.valid, (label, result.reason)
        moved = Message(headers=headers, request=Message("GET", "evil.example", WELL_KNOWN_PATH))
        assert not verify_message(moved, from_directory, 2100, tag=DIRECTORY_TAG, label=label).valid
    late = 2100 + DIRECTORY_LIFETIME
    assert (
        verify_message(
            Message(headers=headers, request=request), from_directory, late, tag=DIRECTORY_TAG
        ).reason
        == "expired"
    )
