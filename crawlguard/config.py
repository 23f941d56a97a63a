"""The YAML config (SPEC: "Config"), validated by pydantic.

Every error names the key path and the reason; unknown keys are errors. The CLI turns a
ConfigError into exit code 2 without starting anything.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crawlguard import config_yaml
from crawlguard.robots.parse_pool import default_workers

HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
PORT_RANGE = re.compile(r"^(\d{1,5})-(\d{1,5})$")


class ConfigError(Exception):
    """A config problem, already phrased for the operator."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_sha256(value: str | None) -> str | None:
    if value is not None and not HEX64.match(value):
        raise ValueError("must be the hex SHA-256 of the token (64 hex digits)")
    return value.lower() if value else value


class ProxySection(_Strict):
    listen_host: str = "127.0.0.1"
    """Proxy listen address (`--listen-host` overrides it)."""
    listen_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    """Proxy port (`--listen-port` overrides it; 0 picks a free one)."""
    confdir: str = "var/mitmproxy"
    """mitmproxy's confdir: where its CA lives. Crawlers trust `mitmproxy-ca-cert.pem` from it.
    The pid file (`crawlguard.pid`) and, with a PostgreSQL store, the spool `store-spool/` live
    beside it."""
    upstream_ca_file: str | None = None
    """Extra CA bundle for verifying origins (tests use a local CA); system CAs otherwise."""
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Open client connections at most. At the cap a new connection closes the oldest
    unauthenticated one of the source holding the most; with none, it is closed itself."""
    max_unauthenticated_per_source: Annotated[int, Field(ge=1, le=1_000_000)] = 64
    """Connections one source address (an IPv6 /64) may hold open before any request or CONNECT
    on them authenticated; one more closes its oldest such connection."""
    header_timeout: Annotated[float, Field(gt=0, le=3600)] = 30
    """Seconds a client connection may spend without a request in flight (sending a request
    head, or idle between requests) before it is closed: slow-header clients hold nothing."""
    max_request_head: Annotated[int, Field(ge=4096, le=1024 * 1024)] = 64 * 1024
    """Bytes of request line plus headers; beyond it, 431 and the connection is closed."""
    max_request_line: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    """Bytes of the request line; beyond it, 414 and the connection is closed."""


class AdminSection(_Strict):
    listen_host: str = "127.0.0.1"
    """Admin server address: metrics, health, dashboard, API. A change needs a restart."""
    port: Annotated[int, Field(ge=0, le=65535)] = 9464
    """Admin server port (`--admin-port` overrides it). A change needs a restart."""
    token_sha256: str | None = None
    """Hex SHA-256 of the operator token for the dashboard and `/api/`; wins over `token_env`
    if both are set. With neither, `/` and `/api/` answer 403. Applies on reload."""
    token_env: str | None = None
    """Name of an environment variable holding the operator token (an unset one stops the
    proxy at start, exit 2). With it in force, dashboard sessions work across replicas sharing
    Redis."""
    token_label: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")] = "operator"
    """Who the tenant audit names for a change made through the API (`api:<label>`): the
    holder of the operator token, since the token itself is never recorded."""

    _v_token = field_validator("token_sha256")(classmethod(lambda cls, v: _check_sha256(v)))


class StoreSection(_Strict):
    url: str = "sqlite:///var/crawlguard.db"
    """Violation store: `sqlite:///rel/path.db` (relative to the config file),
    `sqlite:////abs/path.db`, or `postgresql://user@host:5432/db` (libpq options as a query
    string; password from PGPASSWORD or ~/.pgpass, never in the URL)."""
    retention_days: Annotated[int, Field(ge=1, le=36500)] | None = 30
    """Keep violation records (and request-count hours) this many days; older ones, and
    robots.txt bodies no kept record references, are pruned in the background (first run a
    minute after start, then hourly, 1,000 rows per transaction). An explicit null keeps
    everything (the disk then only grows). Needs a restart to change."""
    fold_after: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    """Identical refusals (tenant, kind, action, host, rule) recorded one by one per
    `fold_interval`; further ones are counted into one record per interval
    (crawlguard.store.fold)."""
    fold_tenant_after: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    """Per tenant and `fold_interval`: individual records at most (across all its keys), and
    distinct folded keys at most (beyond it, one overflow record per kind and action)."""
    fold_interval: Annotated[float, Field(ge=0.1, le=86400)] = 60
    """Seconds of one folding interval: a folded record is written when its interval ends."""
    min_free_bytes: Annotated[int, Field(ge=0)] = 1024**3
    """Below this much free space on the store's filesystem (SQLite: the database's; PostgreSQL:
    the spool's) `/healthz` adds a warning line and `crawlguard_store_disk_low` is 1. 0: never."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith(("postgresql://", "postgres://"))):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v


class StateSection(_Strict):
    url: str = "memory://"
    """Pacing state: `memory://` (per process) or
    `redis://host:port/db[?prefix=…&max_connections=16&timeout=0.5]` shared by replicas, which
    then share the robots.txt cache and dashboard sessions too."""
    on_error: Literal["closed", "open"] = "closed"
    """What to do when a shared state backend (redis://) is down: `closed` refuses paced
    requests with 503 state-unavailable, `open` paces per process meanwhile. memory:// state
    cannot be down, so only the default (`closed`) is accepted with it: a key that would do
    nothing is an error."""

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v == "memory://":
            return v
        if not v.startswith(("redis://", "rediss://")):
            raise ValueError("must be memory:// or redis://host:port/db")
        from crawlguard.state.redis import parse_redis_url

        parse_redis_url(v)  # ValueError says what is wrong (host, port, db, parameters)
        return v

    @field_validator("on_error")
    @classmethod
    def _on_error(cls, v: str, info: ValidationInfo) -> str:
        if "url" not in info.data:  # the url failed: its own error says why
            return v
        if v != "closed" and info.data["url"] == "memory://":
            raise ValueError(
                f"{v!r} is only meaningful with a shared state.url (redis://); "
                "memory:// state cannot fail, remove the key"
            )
        return v


class RobotsSection(_Strict):
    user_agent: str = "crawlguard/1.0 (+https://github.com/crawlguard/crawlguard)"
    """User agent crawlguard fetches robots.txt with."""
    max_age: Annotated[float, Field(gt=0, le=86400)] = 86400
    """Seconds a fetched robots.txt is trusted at most (at most 24 h)."""
    fetch_timeout: Annotated[float, Field(gt=0, le=120)] = 10
    """Seconds a robots.txt fetch may take."""
    max_origins: Annotated[int, Field(ge=1)] = 10000
    """robots.txt cache size in origins (least recently used go first)."""
    parse_workers: Annotated[int, Field(ge=1, le=64)] = Field(default_factory=default_workers)
    """Parser processes per proxy process: at most this many robots.txt parses at once, fairly
    shared by the tenants waiting. Default: the core count, 1 to 4."""
    parse_timeout: Annotated[float, Field(gt=0, le=120)] = 5
    """Seconds a request waits for its robots.txt to be parsed (queue included, after the
    fetch); beyond it that site answers robots-unreachable while the parse goes on, and its
    result is cached for the next request."""


PortSpec = int | str


class DestinationsSection(_Strict):
    allow_private: bool = False
    """Allow loopback, RFC 1918, link-local, CGNAT and ULA destinations (local development and
    tests only); unspecified, multicast, broadcast, documentation and reserved addresses stay
    refused."""
    allowed_ports: list[PortSpec] = Field(default_factory=lambda: [80, 443, "8000-8999"])
    """Destination ports a crawler may reach: port numbers or `"lo-hi"` ranges."""
    hosts: dict[str, list[str]] = Field(default_factory=dict)
    """Static name -> addresses map consulted before DNS (like /etc/hosts). The addresses are
    still checked like resolved ones."""
    dns_cache_ttl: Annotated[float, Field(gt=0, le=3600)] = 60
    """Seconds a resolved name is trusted (failures: 5 s)."""

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        import ipaddress

        out: dict[str, list[str]] = {}
        for name, addresses in v.items():
            key = name.strip().lower().rstrip(".")
            if not key.isascii():
                try:
                    key = key.encode("idna").decode("ascii")
                except UnicodeError:
                    raise ValueError(f"{name!r} is not a host name") from None
            if not key or any(c.isspace() or c in "/[]@:%" for c in key):
                raise ValueError(f"{name!r} is not a host name")
            try:
                ipaddress.ip_address(key)
            except ValueError:
                pass
            else:
                raise ValueError(f"{name!r} is an IP address, not a name")
            if key in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback") or (
                key.endswith(".localhost")
            ):
                raise ValueError(f"{name!r} is a loopback name; it cannot be remapped")
            if key in out:
                raise ValueError(f"{name!r} is listed twice (names are case-insensitive)")
            if not addresses:
                raise ValueError(f"{name!r}: needs at least one address")
            canonical: list[str] = []
            for address in addresses:
                try:
                    canonical.append(ipaddress.ip_address(address.strip()).compressed)
                except ValueError:
                    raise ValueError(f"{name!r}: {address!r} is not an IP address") from None
            out[key] = canonical
        return out

    @field_validator("allowed_ports")
    @classmethod
    def _ports(cls, v: list[PortSpec]) -> list[PortSpec]:
        for item in v:
            if isinstance(item, int):
                if not 1 <= item <= 65535:
                    raise ValueError(f"port {item} is outside 1-65535")
                continue
            m = PORT_RANGE.match(item.strip())
            if not m:
                raise ValueError(f"{item!r} is neither a port number nor a 'lo-hi' range")
            lo, hi = int(m.group(1)), int(m.group(2))
            if not (1 <= lo <= hi <= 65535):
                raise ValueError(f"range {item!r} must satisfy 1 <= lo <= hi <= 65535")
        return v

    def port_allowed(self, port: int) -> bool:
        for item in self.allowed_ports:
            if isinstance(item, int):
                if port == item:
                    return True
            else:
                lo, _, hi = item.strip().partition("-")
                if int(lo) <= port <= int(hi):
                    return True
        return False


class PacingSection(_Strict):
    default_min_interval: Annotated[float, Field(ge=0, le=86400)] = 0
    """Seconds between requests to one site whose robots.txt sets no delay."""
    max_hold: Annotated[float, Field(ge=0, le=3600)] = 30
    """Longest hold, in seconds, of `delay` pacing; a longer wait gets 429 at once."""
    max_held: Annotated[int, Field(ge=0, le=1_000_000)] = 1000
    """Requests held by `delay` pacing at once, all tenants together. Shared fairly
    (crawlguard.policy.pacing.HeldPool): a tenant over its share gets 429 `crawl-delay`, one within
    it that finds the pool full gets 503 `proxy-busy`."""
    scope: Literal["origin", "host", "address"] = "host"
    """What one pacing slot covers: an origin (scheme, host, port: RFC 9309's scope), a host
    (default: every scheme and port of one name share the slot, since Crawl-delay protects a
    server), or a host and, besides, every dialled IP address (names of one server share it)."""


class SiteBudget(_Strict):
    """The whole platform's cap on one site (docs/operators/site-budget.md)."""

    max_rps: Annotated[float, Field(gt=0, le=1_000_000)] | None = 4.0
    """Requests per second to one site from all tenants together at most; null: no cap. Four a
    second is what a small dynamic site (shared hosting, a CMS without a page cache) serves
    without its owner noticing; a site that wants more says so with an override."""
    max_concurrency: Annotated[int, Field(ge=1, le=1_000_000)] | None = 8
    """Requests to one site in flight at once from all tenants together at most; null: no cap.
    Bounds the server workers the platform can tie up when a site slows down."""


class SiteOverride(_Strict):
    """A site's own budget. A key left out is `site_budget`'s, filled in at load
    (`PlatformSection._inherit`); null: no cap for that site."""

    site: str
    """Host glob (crawlguard.policy.limits, as `tenants[].allow_hosts`) matched against the site
    key (`platform.site_key`: the host, or its registrable domain); the first override that
    matches a site wins."""
    max_rps: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    """The site's `max_rps` instead of `platform.site_budget.max_rps` (null: no cap; left out:
    `site_budget`'s)."""
    max_concurrency: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """The site's `max_concurrency` instead of `platform.site_budget.max_concurrency` (null:
    no cap; left out: `site_budget`'s)."""

    @field_validator("site")
    @classmethod
    def _glob(cls, v: str) -> str:
        from crawlguard.policy.limits import normalise_glob

        return normalise_glob(v)


class PlatformSection(_Strict):
    """The platform seen from a site: one polite crawler, whatever the number of tenants
    (docs/operators/site-budget.md)."""

    site_key: Literal["host", "domain"] = "host"
    """What one site budget covers: `host` (each host name its own) or `domain` (every host
    of one registrable domain, a browser's "site": `a.example.co.uk` and `b.example.co.uk`
    share `example.co.uk`; private suffixes such as `github.io` count, so `x.github.io` and
    `y.github.io` stay apart). From the Public Suffix List snapshot the installed `tldextract`
    bundles; never fetched at run time."""
    crawl_delay: Literal["shared", "per-tenant"] = "shared"
    """`shared`: a site's Crawl-delay / Request-rate (the largest that applies to any tenant
    there, or `pacing.default_min_interval`) paces the whole platform on that site, its slots
    handed to the tenants that want them in turn. `per-tenant`: each tenant is paced on its
    own (ten tenants: ten times the rate). Each tenant's own pacing applies in both."""
    site_budget: SiteBudget = Field(default_factory=SiteBudget)
    """The cap on every site that no `site_overrides` entry matches."""
    site_overrides: list[SiteOverride] = Field(default_factory=list)
    """Sites with a budget of their own (those that publish higher limits, or ask for lower):
    `{site: glob, max_rps, max_concurrency}`, first match wins."""

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """An override's key left out takes `site_budget`'s value here, at load, so the
        model holds plain values (a snapshot written for `--workers` reads back the same)."""
        if not isinstance(data, dict) or not isinstance(data.get("site_overrides"), list):
            return data
        try:
            budget = SiteBudget.model_validate(data.get("site_budget", {}))
        except ValidationError:
            budget = SiteBudget()  # its own error is reported where it is
        overrides = []
        for index, item in enumerate(data["site_overrides"]):
            if isinstance(item, dict):
                if not {"max_rps", "max_concurrency"} & item.keys():
                    raise ValueError(
                        f"site_overrides[{index}] (site {item.get('site')!r}): set max_rps or "
                        "max_concurrency (or both); an override of neither changes nothing"
                    )
                item = {
                    "max_rps": budget.max_rps,
                    "max_concurrency": budget.max_concurrency,
                    **item,
                }
            overrides.append(item)
        return {**data, "site_overrides": overrides}

    @field_validator("site_overrides")
    @classmethod
    def _distinct(cls, v: list[SiteOverride]) -> list[SiteOverride]:
        seen: set[str] = set()
        for override in v:
            if override.site in seen:
                raise ValueError(
                    f"site {override.site!r} is listed twice; the first match wins, so the "
                    "second would never apply"
                )
            seen.add(override.site)
        return v


class TenancySection(_Strict):
    """Where the tenants live (docs/operators/tenancy.md)."""

    source: Literal["file", "store"] = "file"
    """`file`: the `tenants` list of this file. `store`: the tenant registry in the store's
    database (crawlguard.tenancy), managed by the admin API and `crawlguard tenants`; tenants
    listed here then only seed it (created on start when their id is not there yet).
    Needs a restart to change."""
    rotate_grace: Annotated[float, Field(ge=0, le=366 * 86400)] = 3600
    """Seconds a tenant's previous token keeps working after a rotation (0: at once invalid),
    so a control plane can roll the new one out to its crawlers first."""


class Tenant(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    """Tenant id, the proxy user name: 1-64 of `A-Z a-z 0-9 _ . -`, starting with a letter or
    digit."""
    token_sha256: str | None = None
    """Hex SHA-256 of the tenant's token; exactly one of this and `token_env`."""
    token_env: str | None = None
    """Name of an environment variable holding the tenant's token (read and hashed at load)."""
    product_tokens: Annotated[list[str], Field(min_length=1)]
    """The product tokens the tenant's user agents carry, e.g. `[AcmeBot]`: letters, `_`, `-`,
    3+ characters, not a well-known crawler's or a library's name, unique across tenants."""
    mode: Literal["enforce", "monitor", "off"] = "enforce"
    """`enforce` refuses; `monitor` forwards and records what it would have refused (`logged`);
    `off` forwards and records nothing (metrics still count; destination checks still apply)."""
    pacing: Literal["reject", "delay"] = "reject"
    """A request sooner than the site's delay: `reject` answers 429, `delay` holds it until its
    slot (at most `pacing.max_hold`)."""
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    """Requests of this tenant in flight at once at most (fair limit); none: no cap."""
    max_rps: Annotated[float, Field(gt=0)] | None = None
    """Requests per second of this tenant at most (fair limit); none: no cap."""
    allow_hosts: list[str] = Field(default_factory=list)
    """Host globs (crawlguard.policy.limits): when non-empty, only matching hosts may be crawled."""
    deny_hosts: list[str] = Field(default_factory=list)
    """Host globs this tenant may never crawl; deny wins over allow. Every mode, `off` too."""
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """The tenant's share of a busy site's budget against the others waiting for that site
    (2: twice the slots of a tenant of weight 1). Unused shares go to the others."""

    _v_token = field_validator("token_sha256")(classmethod(lambda cls, v: _check_sha256(v)))

    @field_validator("allow_hosts", "deny_hosts")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        from crawlguard.policy.limits import normalise_glob

        return [normalise_glob(glob) for glob in v]

    @field_validator("product_tokens")
    @classmethod
    def _tokens(cls, v: list[str]) -> list[str]:
        from crawlguard.policy.ua import product_token_problem

        for token in v:
            problem = product_token_problem(token)
            if problem:
                raise ValueError(f"product token {token!r}: {problem}")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> Tenant:
        if bool(self.token_sha256) == bool(self.token_env):
            raise ValueError("set exactly one of token_sha256 or token_env")
        return self

    def token_digest(self) -> bytes:
        """SHA-256 digest of the tenant's token; token_env is read (and hashed) at load time."""
        if self.token_sha256:
            return bytes.fromhex(self.token_sha256)
        value = os.environ.get(self.token_env or "")
        if not value:
            raise ConfigError(
                f"tenants[{self.id}].token_env: environment variable {self.token_env} is not set"
            )
        return hashlib.sha256(value.encode()).digest()


class Config(_Strict):
    proxy: ProxySection = Field(default_factory=ProxySection)
    admin: AdminSection = Field(default_factory=AdminSection)
    store: StoreSection = Field(default_factory=StoreSection)
    state: StateSection = Field(default_factory=StateSection)
    robots: RobotsSection = Field(default_factory=RobotsSection)
    destinations: DestinationsSection = Field(default_factory=DestinationsSection)
    pacing: PacingSection = Field(default_factory=PacingSection)
    platform: PlatformSection = Field(default_factory=PlatformSection)
    tenancy: TenancySection = Field(default_factory=TenancySection)
    tenants: list[Tenant] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        ids: set[str] = set()
        owner: dict[str, str] = {}
        for tenant in self.tenants:
            if tenant.id in ids:
                raise ValueError(f"tenants: duplicate tenant id {tenant.id!r}")
            ids.add(tenant.id)
            for token in tenant.product_tokens:
                other = owner.get(token.lower())
                if other is not None and other != tenant.id:
                    raise ValueError(
                        f"tenants: product token {token!r} is registered by both "
                        f"{other!r} and {tenant.id!r}"
                    )
                owner[token.lower()] = tenant.id
        return self

    def admin_token_digest(self) -> bytes | None:
        if self.admin.token_sha256:
            return bytes.fromhex(self.admin.token_sha256)
        if self.admin.token_env:
            value = os.environ.get(self.admin.token_env)
            if not value:
                raise ConfigError(
                    f"admin.token_env: environment variable {self.admin.token_env} is not set"
                )
            return hashlib.sha256(value.encode()).digest()
        return None


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    """Key path for an error location, naming list items by tenant id where possible."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = str(item)
            if isinstance(node, list) and 0 <= item < len(node):
                entry = node[item]
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    label = entry["id"]
                node = entry
            else:
                node = None
            if parts:
                parts[-1] += f"[{label}]"
            else:
                parts.append(f"[{label}]")
        else:
            parts.append(item)
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _model_at(loc: tuple[int | str, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model whose keys are valid at `loc` (a list index or dict key steps into the item
    type), or None when `loc` leads elsewhere."""
    model: Any = root
    for item in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(item) if isinstance(item, str) else None
            if field is None:
                return None
            model = field.annotation
            while not (isinstance(model, type) and issubclass(model, BaseModel)):
                args = [a for a in get_args(model) if a is not type(None)]
                if not args:
                    break
                model = args[-1]  # list[X] and dict[K, X]: X; X | None: X
            continue
        return None  # a list index or dict key where no model is: not a model's key
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def did_you_mean(key: str, valid: list[str]) -> str:
    """`(did you mean 'x'?)` for the nearest valid spelling (as the CLI does for --kind)."""
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not near:
        near = [v for v in valid if v.casefold() == key.casefold().replace("-", "_")]
    return f" (did you mean {near[0]!r}?)" if near else ""


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    if not loc or not isinstance(loc[-1], str):
        return "unknown key"
    model = _model_at(_model_path(loc[:-1]), Config)
    if model is None:
        return "unknown key"
    return "unknown key" + did_you_mean(loc[-1], list(model.model_fields))


def _model_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The field names of a location, without list indexes (walking models needs only those)."""
    return tuple(x for x in loc if isinstance(x, str))


def format_validation_error(exc: ValidationError, data: Any) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and "[" in x))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(loc)
        lines.append(f"{_loc(loc, data)}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def parse_config(data: Any, source: str = "<config>", *, secrets: bool = True) -> Config:
    """Validate a config. `secrets=False` (operator commands: violations, report, reload, ca)
    skips reading `token_env` variables: reading records needs no tenant's secret."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc, data)}") from None
    if secrets:
        for tenant in config.tenants:
            tenant.token_digest()  # surfaces a missing token_env now, not at the first request
        config.admin_token_digest()
    return config


def load_config(path: str | os.PathLike[str], *, secrets: bool = True) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config is not UTF-8 text") from None
    with collector_paused():
        try:
            data = config_yaml.load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: YAML syntax error: {yaml_error_in(exc, p)}") from None
        return relative_to(parse_config(data, str(p), secrets=secrets), p.parent)


def yaml_error_in(exc: yaml.YAMLError, path: str | os.PathLike[str]) -> str:
    """PyYAML's message with the file's name where it says `<unicode string>` (the parser was
    given the text, not the file, to stay fast)."""
    return str(exc).replace('"<unicode string>"', f'"{path}"')


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a config is parsed and validated (or a tenant
    set built): those build millions of objects, none garbage, and each full collection would
    walk them all again (half of the load time of 100,000 tenants), holding the interpreter
    lock, so the event loop too. Nothing here makes reference cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def relative_to(cfg: Config, base: Path) -> Config:
    """Relative file paths in `cfg` (confdir, upstream CA, SQLite file) made absolute against
    `base`, the config file's folder: the proxy and the operator commands then find the same
    store and CA from any working directory."""

    def absolute(path: str) -> str:
        expanded = Path(path).expanduser()
        return str(expanded if expanded.is_absolute() else (base / expanded).resolve())

    proxy = cfg.proxy.model_copy(
        update={
            "confdir": absolute(cfg.proxy.confdir),
            "upstream_ca_file": cfg.proxy.upstream_ca_file and absolute(cfg.proxy.upstream_ca_file),
        }
    )
    store = cfg.store
    scheme, sep, rest = store.url.partition("://")
    relative = rest.startswith("/") and not rest.startswith("//")
    if (
        sep
        and scheme.lower() == "sqlite"
        and relative
        and not rest.endswith("/")
        and "?" not in rest
    ):
        # sqlite:///rel/file.db -> sqlite:////abs/dir/rel/file.db (malformed URLs are left
        # for open_store to explain)
        store = store.model_copy(update={"url": "sqlite:///" + absolute(rest[1:])})
    return cfg.model_copy(update={"proxy": proxy, "store": store})


def with_overrides(config: Config, **overrides: Any) -> Config:
    """Apply command-line flags: keys like 'proxy.listen_port'; None means 'not given'.
    Only the sections named are validated again (not 100,000 tenants for a port flag)."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".")
        if section == "tenants":
            raise ValueError("with_overrides: tenants have no flags")
        sections.setdefault(section, getattr(config, section).model_dump())[key] = value
    if not sections:
        return config
    update = {
        name: type(getattr(config, name)).model_validate(data) for name, data in sections.items()
    }  # a ValidationError is a ValueError, as the whole Config's was
    return config.model_copy(update=update)
