"""The web-bot-auth profile of HTTP Message Signatures (RFC 9421), as pure functions.

Profile: draft-ietf-webbotauth-httpsig-protocol, the -01 text as in the editor's copy
(thibmeu/http-message-signatures-directory, draft-ietf-webbotauth-httpsig-protocol.md at
164910d). Its "Signature-Agent" section makes the field a structured-field Dictionary (since
draft-meunier-web-bot-auth-architecture-04; earlier revisions sent a bare sf-string, which
signers must no longer send) whose member is covered as `"signature-agent";key=<label>`
(RFC 9421 §2.1.2). A member without a `type` parameter means `type=directory`: the value is
the origin serving /.well-known/http-message-signatures-directory. "Generating HTTP Message
Signature" requires `@authority`, created, expires, a thumbprint keyid and
`tag="web-bot-auth"`, and recommends `@method`/`@path` to narrow a signature to one request;
crawlguard covers all of them. Ed25519 (RFC 9421 §3.3.6) is the only algorithm: tenant keys
are Ed25519 and a verifier must not be talked into another algorithm by `alg`.

Test vectors: RFC 9421 Appendix B.2.6, and the draft's "Test Vectors" section, Ed25519
("Signature-Agent Included", the legacy sf-string form, the signed directory response), which
are also published as JSON with the reference implementation (cloudflare/web-bot-auth).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import http_sf
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crawlguard.identity.keys import thumbprint

ALG = "ed25519"
TAG = "web-bot-auth"
MAX_LIFETIME = 300
"""Issue 23: `expires` at most five minutes after `created`: a captured request dies fast."""
DEFAULT_SKEW = 60
"""How far in the future a verifier accepts `created` (clocks of signer and verifier differ)."""
NONCE_BYTES = 64
"""The draft sets no nonce requirement (it defers to RFC 9421 §7.2.2); 64 random bytes in
base64 is what the reference implementation and the draft's vectors use."""

WEB_BOT_AUTH_COMPONENTS = ("@authority", "@method", "@path")

Params = dict[str, str | int | bool]
Component = tuple[str, Params]
"""A component identifier (RFC 9421 §2): the name and its parameters (`key`, `req`, ...)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


class SignatureError(ValueError):
    """The message lacks what a component needs, or a signature's fields are malformed."""


@dataclass(frozen=True)
class Message:
    """What RFC 9421 needs of an HTTP message. `request` is the request a response answers,
    for components with the `req` parameter (RFC 9421 §2.4)."""

    method: str = ""
    authority: str = ""
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    scheme: str = "https"
    request: Message | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


def canonical_authority(authority: str, scheme: str = "https") -> str:
    """RFC 9421 §2.2.3: host lower-cased, the scheme's default port omitted."""
    text = authority.strip().lower()
    port: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SignatureError(f"bad authority {authority!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise SignatureError(f"bad authority {authority!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    if not port:
        return host
    if not port.isdigit():
        raise SignatureError(f"bad port in authority {authority!r}")
    if int(port) == _DEFAULT_PORTS.get(scheme.lower()):
        return host
    return f"{host}:{int(port)}"


def _path_value(path: str) -> str:
    """RFC 9421 §2.2.6: the absolute path without the query; an empty path is `/`."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    return path or "/"


def component_id(component: Component) -> str:
    """The serialised component identifier (RFC 9421 §2): an sf-string with its parameters."""
    name, params = component
    return http_sf.ser_item((name, params))


def _inner_list(components: Sequence[Component], params: Params) -> str:
    member = http_sf.ser_dictionary({"s": (list(components), params)})
    return member[2:]


def _field_value(message: Message, name: str, params: Params) -> str:
    raw = message.header(name)
    if raw is None:
        raise SignatureError(f"the message has no {name!r} field")
    value = raw.strip()
    if "key" in params:
        try:
            members = http_sf.parse(value.encode("ascii"), tltype="dictionary")
        except (http_sf.StructuredFieldError, UnicodeEncodeError) as exc:
            raise SignatureError(f"{name!r} is not a structured-field dictionary") from exc
        key = params["key"]
        if not isinstance(key, str) or key not in members:
            raise SignatureError(f"{name!r} has no member {key!r}")
        # RFC 9421 §2.1.2: the member's value re-serialised (item or inner list).
        return http_sf.ser_dictionary({"k": members[key]})[2:]
    return value


def component_value(component: Component, message: Message) -> str:
    """RFC 9421 §2.1 (fields) and §2.2 (derived components) for what the profile uses."""
    name, params = component
    unknown = set(params) - {"key", "req"}
    if unknown:
        raise SignatureError(f"unsupported component parameters {sorted(unknown)}")
    if params.get("req"):
        if message.request is None:
            raise SignatureError(f"{name!r};req needs the request")
        message = message.request
    if name == "@method":
        return message.method
    if name == "@authority":
        return canonical_authority(message.authority, message.scheme)
    if name == "@path":
        return _path_value(message.path)
    if name.startswith("@"):
        raise SignatureError(f"unsupported derived component {name!r}")
    if name != name.lower():
        raise SignatureError(f"field names are lower-case in component identifiers: {name!r}")
    return _field_value(message, name, params)


def signature_params_value(components: Sequence[Component], params: Params) -> str:
    """The `@signature-params` value (RFC 9421 §2.3): the inner list with its parameters, in
    the order given: the same string goes into Signature-Input."""
    return _inner_list(components, params)


def signature_base(components: Sequence[Component], params: Params, message: Message) -> str:
    """RFC 9421 §2.5: one `id: value` line per covered component, then `@signature-params`;
    lines joined by LF with no trailing LF."""
    lines: list[str] = []
    seen: set[str] = set()
    for component in components:
        ident = component_id(component)
        if ident in seen:
            raise SignatureError(f"component {ident} is covered twice")
        seen.add(ident)
        value = component_value(component, message)
        if "\n" in value or "\r" in value or not value.isascii():
            # RFC 9421 §2.5: the base is ASCII, one line per component.
            raise SignatureError(f"component {ident} has a line break or non-ASCII text")
        lines.append(f"{ident}: {value}")
    lines.append(f'"@signature-params": {signature_params_value(components, params)}')
    return "\n".join(lines)


def signature_agent_value(label: str, origin: str) -> str:
    """The `Signature-Agent` field: a Dictionary whose `label` member is the sf-string origin
    serving /.well-known/http-message-signatures-directory, e.g.
    `sig1="https://acme.agents.example"`. No `type` parameter: absent means `directory`, and
    for that type the draft requires the value to be an https origin (no path, query, user)."""
    parts = urlsplit(origin)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise SignatureError(f"a directory Signature-Agent must be an https origin: {origin!r}")
    return http_sf.ser_dictionary({label: (origin, {})})


def new_nonce() -> str:
    """A per-request nonce (RFC 9421 §7.2.2), so a site that records nonces can reject a
    replay within the validity window."""
    return base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode("ascii")


def sign_base(private_key: Ed25519PrivateKey, base: str) -> bytes:
    """RFC 9421 §3.3.6: Ed25519 over the signature base's bytes (ASCII)."""
    return private_key.sign(base.encode("ascii"))


def free_label(headers: Mapping[str, str]) -> str:
    """The first `sigN` label no signature field of the message uses yet, so the platform's
    signature goes next to one the tenant made itself instead of replacing it."""
    used: set[str] = set()
    for key, value in headers.items():
        if key.lower() in ("signature-agent", "signature-input", "signature"):
            try:
                used |= set(http_sf.parse(value.strip().encode("ascii"), tltype="dictionary"))
            except (http_sf.StructuredFieldError, UnicodeEncodeError):
                continue
    return next(f"sig{n}" for n in range(1, len(used) + 2) if f"sig{n}" not in used)


def _merged(existing: str | None, label: str, member: tuple[object, Params], name: str) -> str:
    """Adds our member to a field the message may already carry (a tenant's own signature
    stays, ours goes next to it); a label clash would overwrite it, so it is refused."""
    members: dict[str, object] = {}
    if existing is not None and existing.strip():
        try:
            members = dict(http_sf.parse(existing.strip().encode("ascii"), tltype="dictionary"))
        except (http_sf.StructuredFieldError, UnicodeEncodeError) as exc:
            raise SignatureError(f"the message's {name} is not a dictionary") from exc
    if label in members:
        raise SignatureError(f"the message's {name} already has a member {label!r}")
    members[label] = member
    return http_sf.ser_dictionary(members)  # type: ignore[arg-type]


def sign(
    private_key: Ed25519PrivateKey,
    *,
    method: str,
    authority: str,
    path: str,
    headers: Mapping[str, str],
    agent_origin: str,
    now: int,
    lifetime: int = MAX_LIFETIME,
    label: str = "sig1",
    scheme: str = "https",
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers to set on a forwarded request (replacing same-named ones, which are merged
    in): `Signature-Agent`, `Signature-Input`, `Signature`, covering `@authority @method @path
    "signature-agent";key=<label>` with created, expires, keyid (thumbprint), alg, nonce, tag.
    Call it after every other header change: what is signed must be what is sent.

    A signature already on the request (a tenant signing its own) is left untouched and ours
    goes next to it under `label` (see `free_label`): the draft's "Multiple Signatures" lets a
    signer cover another label's members but then it must cover all of them, which it cannot
    once it has changed any of them, so crawlguard signs on its own terms only."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"lifetime must be in 1..{MAX_LIFETIME} seconds")
    signature_agent_value(label, agent_origin)  # refuses what is not an https origin
    agent = _merged(
        next((v for k, v in headers.items() if k.lower() == "signature-agent"), None),
        label,
        (agent_origin, {}),
        "Signature-Agent",
    )
    components: list[Component] = [(name, {}) for name in WEB_BOT_AUTH_COMPONENTS]
    components.append(("signature-agent", {"key": label}))
    params: Params = {
        "created": int(now),
        "expires": int(now) + lifetime,
        "keyid": thumbprint(private_key.public_key()),
        "alg": ALG,
        "nonce": nonce if nonce is not None else new_nonce(),
        "tag": TAG,
    }
    others = {k: v for k, v in headers.items() if k.lower() != "signature-agent"}
    message = Message(method, authority, path, {**others, "Signature-Agent": agent}, scheme)
    signature = sign_base(private_key, signature_base(components, params, message))

    def existing(name: str) -> str | None:
        return next((v for k, v in headers.items() if k.lower() == name), None)

    return {
        "Signature-Agent": agent,
        "Signature-Input": _merged(
            existing("signature-input"), label, (components, params), "Signature-Input"
        ),
        "Signature": _merged(existing("signature"), label, (signature, {}), "Signature"),
    }


@dataclass(frozen=True)
class VerifyResult:
    """Why a signature is or is not acceptable; `reason` is for people (CLI, logs)."""

    valid: bool
    reason: str
    label: str | None = None
    keyid: str | None = None
    agent: str | None = None


KeyLookup = Callable[[str | None, str], Ed25519PublicKey | None]
"""(agent URL, keyid) -> key. The draft ("Validating Message Signature") keys the lookup on
the pair: a verifier that looks up by keyid alone would attribute a request to whatever URL
the client asserts. The URL is the covered Signature-Agent member's value (None if none)."""


def _agent_url(components: Sequence[Component], message: Message) -> str | None:
    """The URL of the first covered Signature-Agent member (a dictionary member, or the whole
    field in the legacy sf-string form)."""
    for component in components:
        if component[0] == "signature-agent":
            value = component_value(component, message)
            try:
                item = http_sf.parse(value.encode("ascii"), tltype="item")
            except http_sf.StructuredFieldError as exc:
                raise SignatureError("the Signature-Agent member is not an sf-string") from exc
            if not isinstance(item[0], str):
                raise SignatureError("the Signature-Agent member is not an sf-string")
            return item[0]
    return None


def verify_message(
    message: Message,
    key_lookup: KeyLookup,
    now: int,
    *,
    tag: str = TAG,
    required: Sequence[str] = ("@authority",),
    label: str | None = None,
    max_skew: int = DEFAULT_SKEW,
) -> VerifyResult:
    """Independent of `sign`: parses the fields, rebuilds the base from what was declared
    covered, and checks Ed25519, the time window and the tag. The first signature with `tag`
    (or the one named `label`) is checked."""
    raw_input, raw_sig = message.header("signature-input"), message.header("signature")
    if raw_input is None or raw_sig is None:
        return VerifyResult(False, "no Signature-Input or Signature field")
    try:
        inputs = http_sf.parse(raw_input.strip().encode("ascii"), tltype="dictionary")
        sigs = http_sf.parse(raw_sig.strip().encode("ascii"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError):
        return VerifyResult(False, "Signature-Input or Signature is not a structured dictionary")
    candidates = [label] if label is not None else list(inputs)
    chosen = None
    for name in candidates:
        entry = inputs.get(name)
        if isinstance(entry, tuple) and isinstance(entry[0], list) and entry[1].get("tag") == tag:
            chosen = name
            break
    if chosen is None:
        return VerifyResult(False, f"no signature with tag {tag!r}")
    inner, params = inputs[chosen]
    keyid = params.get("keyid")

    def fail(reason: str) -> VerifyResult:
        return VerifyResult(False, reason, chosen, keyid if isinstance(keyid, str) else None)

    sig_entry = sigs.get(chosen)
    if not (isinstance(sig_entry, tuple) and isinstance(sig_entry[0], bytes)):
        return fail(f"no byte-sequence Signature for {chosen!r}")
    if params.get("alg", ALG) != ALG:
        return fail(f"alg {params.get('alg')!r} is not {ALG!r}")
    if not isinstance(keyid, str):
        return fail("no keyid")
    created, expires = params.get("created"), params.get("expires")
    if type(created) is not int or type(expires) is not int:
        return fail("created and expires must both be integers")
    if created > now + max_skew:
        return fail("created is in the future")
    if expires <= created:
        return fail("expires is not after created")
    if expires <= now:
        return fail("expired")
    components: list[Component] = []
    for item in inner:
        name, cparams = item
        if not isinstance(name, str):
            return fail("a covered component is not a string")
        components.append((name, dict(cparams)))
    covered = {name for name, _ in components}
    missing = [name for name in required if name not in covered]
    agent_field = message.header("signature-agent")
    if agent_field is not None and tag == TAG and "signature-agent" not in covered:
        missing.append("signature-agent")
    if missing:
        return fail(f"required components not covered: {missing}")
    try:
        base = signature_base(components, dict(params), message)
        agent = _agent_url(components, message)
    except SignatureError as exc:
        return fail(str(exc))
    public_key = key_lookup(agent, keyid)
    if public_key is None:
        return fail(f"unknown keyid {keyid!r} for {agent!r}")
    try:
        public_key.verify(sig_entry[0], base.encode("ascii"))
    except InvalidSignature:
        return fail("signature does not match")
    except UnicodeEncodeError:
        return fail("signature base is not ASCII")
    return VerifyResult(True, "valid", chosen, keyid, agent)


def verify(
    method: str,
    authority: str,
    path: str,
    headers: Mapping[str, str],
    key_lookup: KeyLookup,
    now: int,
    *,
    scheme: str = "https",
    max_skew: int = DEFAULT_SKEW,
) -> VerifyResult:
    """A captured request as a site would see it (for `crawlguard identity verify`): the
    web-bot-auth signature must cover @authority @method @path and the Signature-Agent member."""
    return verify_message(
        Message(method, authority, path, headers, scheme),
        key_lookup,
        now,
        required=(*WEB_BOT_AUTH_COMPONENTS, "signature-agent"),
        max_skew=max_skew,
    )
