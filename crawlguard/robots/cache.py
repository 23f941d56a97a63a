"""robots.txt fetching and caching: one copy per origin, shared by all tenants (RFC 9309 §2.3).

`peek` is the proxy's hot path (memory only); `get` fetches on a miss with one fetch per origin
however many requests are waiting. Every origin behaviour ends as a `RobotsEntry`, never an
exception, so the proxy can always decide.

Choices where RFC 9309 leaves room (documented in docs/crawlers/robots-txt.md):

* Lifetime: `min(max_age, 24 h)`, shortened by `Cache-Control: s-maxage/max-age` or
  `Expires` (minus `Age`). `no-store`, `no-cache`, `private`, `max-age=0` and unparseable
  values mean "short" = `min_age` (60 s): honouring them literally would refetch robots.txt
  on every proxied request, which is worse etiquette than the staleness it avoids.
* More than 5 redirects: RFC 9309 §2.3.1.2 says the file MAY be assumed *unavailable*, which
  §2.3.1.3 defines like a 4xx: no restrictions (Google does the same). Result "redirects".
* Failures (429, 5xx, timeout, network error): complete disallow unless a 2xx copy not older
  than 30 days exists ("stale"). Retried after 30 s, doubling per consecutive failure, capped
  at 15 min; an origin's larger `Retry-After` on 429/503 is honoured up to that cap.
* A body cut at 500 KiB loses its last partial line, so a half rule never decides.
* Egress (with an `EgressPolicy`): every hop, the first and each redirect's Location, is
  admitted (port in `allowed_ports`, every resolved address allowed) BEFORE it is requested,
  and names connect only to the address that was checked. A forbidden hop ends the fetch as
  "error" (complete disallow, fail closed) without any connection attempt to it, so a
  robots.txt redirect can neither reach internal services nor probe which ports are open.
* Parsing (up to ~0.8 s of CPU for a hostile 500 KiB file) runs in worker processes behind
  per-tenant queues (crawlguard.robots.parse_pool), queued for every tenant whose request
  waits. A parse not done within `parse_timeout` answers the waiting requests now: that site
  alone fails closed ("parse-timeout", Retry-After about one more `parse_timeout`), or keeps
  its stale copy; the parse goes on and its rules are cached when they land, so the next
  request needs no second fetch.

Shared across replicas (with a `SharedRobots`, e.g. crawlguard.robots.shared for
`state.url: redis://…`): the in-process cache stays in front, so a fresh local entry answers
without any I/O. A local miss first `claim`s the origin in the shared store: a fresh shared
record is adopted (its raw body re-parsed here, its SHA-256 checked, the 500 KiB cap kept);
otherwise the fetch lock is taken and this process fetches and `publish`es the outcome (failure
entries too, with their retry time, so replicas do not hammer a failing origin); or another
replica holds the lock and this one polls until its record appears or the lock expires (its
holder died), then fetches itself. The shared store never decides anything: when it is
unreachable `claim` answers None and robots.txt is fetched per process, as without it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import ssl as ssl_module
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from crawlguard.egress import EgressPolicy
from crawlguard.policy.http_dates import parse_http_date, parse_retry_after
from crawlguard.policy.identity import IdentityError, canonical_host
from crawlguard.policy.robots import ALLOW_ALL, MAX_BYTES, RobotsRules
from crawlguard.robots import parse_pool
from crawlguard.robots.parse_pool import ParseJob, RobotsParsePool, Tenant

log = logging.getLogger(__name__)

Origin = tuple[str, str, int]
"""(scheme, host, port): robots.txt is per origin (RFC 9309 §2.3)."""

MAX_REDIRECTS = 5
MAX_AGE_CAP = 86400.0
STALE_LIMIT = 30 * 86400.0
MIN_AGE = 60.0
BACKOFF_BASE = 30.0
BACKOFF_MAX = 900.0
MAX_CACHED_BYTES = 256 * 1024 * 1024
_CHUNK = 16 * 1024
_FAILURES = frozenset({"429", "5xx", "timeout", "error"})
_NO_RESTRICTIONS = frozenset({"4xx", "redirects"})
LOCK_MARGIN = 5.0  # fetch lock lifetime beyond fetch_timeout: parse, publish, slack
POLL_MIN = 0.02  # first pause while another replica fetches; doubles up to POLL_MAX
POLL_MAX = 0.2
PARSE_TIMEOUT = 5.0  # robots.parse_timeout's default
TLS_VERIFY_FAILED = "TLS certificate verification failed"
TLS_FIX = (
    "the site's certificate is not signed by a CA crawlguard trusts; for a site with its own "
    "CA, set proxy.upstream_ca_file to that CA's PEM file"
)


@dataclass(frozen=True, slots=True)
class RobotsEntry:
    """What the proxy decides with for one origin until `expires_at`."""

    rules: RobotsRules  # rules in force (ALLOW_ALL when there are no restrictions)
    available: bool  # False = complete disallow (robots-unreachable): no usable copy
    sha256: str | None  # SHA-256 of the body in force, None when none
    body: bytes | None  # body in force, kept for content-addressed violation evidence
    result: str  # last fetch: ok, 4xx, 429, 5xx, timeout, error, redirects, stale, parse-timeout
    fetched_at: float  # clock() when this entry was made
    expires_at: float  # clock() after which the next fetch is due
    detail: str = ""  # human-readable cause of a failure ("HTTP 503", "ConnectionRefused…")

    def retry_after(self, now: float) -> int:
        """Whole seconds (>= 1) until the next fetch attempt, for `Retry-After`."""
        return max(1, math.ceil(self.expires_at - now))

    @property
    def cause(self) -> str | None:
        """A failure's cause worth telling the client (the 503's reason, the record): one the
        operator can fix in the config, a TLS verification failure. Others stay in the log."""
        return self.detail if self.detail.startswith(TLS_VERIFY_FAILED) else None


def tls_failure(exc: BaseException) -> str | None:
    """Why a fetch failed in TLS, said first (a cut log line still says it), or None.

    aiohttp wraps the `ssl` error (`ClientConnectorCertificateError.certificate_error`, or as
    the cause); its own message puts the reason last, after the host and port."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        inner = [getattr(err, "certificate_error", None), getattr(err, "os_error", None)]
        if any(isinstance(e, BaseException) for e in inner):
            # aiohttp's wrappers subclass the ssl errors but lack their fields: look inside
            todo += [e for e in inner if isinstance(e, BaseException)]
        elif isinstance(err, ssl_module.SSLCertVerificationError):
            why = getattr(err, "verify_message", None) or getattr(err, "reason", None) or err
            return f"{TLS_VERIFY_FAILED} (certificate verify failed: {why}): {TLS_FIX}"
        elif isinstance(err, ssl_module.SSLError):
            return f"TLS handshake failed: {getattr(err, 'reason', None) or err}"
        todo += [err.__cause__, err.__context__]
    return None


@dataclass(slots=True)
class _Fetched:
    result: str
    body: bytes | None = None
    lifetime: float | None = None  # from caching headers; None = no opinion
    retry_hint: float | None = None  # origin's Retry-After on 429/503
    detail: str = ""
    status: int | None = None  # HTTP status of the last hop, None when there was no answer


@dataclass(frozen=True, slots=True)
class SharedRecord:
    """One origin's fetch outcome as replicas share it. Times are relative (seconds), so each
    process maps them onto its own clock; a store keeps them as absolute times of one clock."""

    result: str  # ok, 4xx, 429, 5xx, timeout, error, redirects, stale
    body: bytes | None  # raw body in force (ok, stale), None otherwise
    sha256: str | None  # SHA-256 of `body`
    detail: str
    status: int | None  # HTTP status of the last fetch's last hop, None when none
    age: float  # seconds since the fetch
    lifetime_left: float  # seconds until the next fetch is due
    good_age: float | None  # seconds since `body` was fetched (older than `age` when stale)
    failures: int  # consecutive failed fetches (the back-off exponent)


@dataclass(frozen=True, slots=True)
class Claim:
    """Answer to `SharedRobots.claim`: exactly one of the three."""

    record: SharedRecord | None = None  # a fresh shared record: use it, fetch nothing
    locked: bool = False  # no record, and the origin's fetch lock is now the caller's
    wait: float = 0.0  # another process holds the lock for `wait` more seconds


class SharedRobots(Protocol):
    """robots.txt outcomes shared by replicas, with one fetch lock per origin. Implementations
    never raise: when unavailable `claim` answers None and the other calls do nothing."""

    async def claim(self, origin: Origin, token: str, lock_ttl: float) -> Claim | None:
        """The fresh record; else take the fetch lock for `token` (`lock_ttl` s); else how
        long the current holder's lock lasts. Atomic. None: the store is unavailable."""
        ...

    async def publish(self, origin: Origin, record: SharedRecord, token: str | None) -> None:
        """Store `record` until it expires, and release the lock if `token` still holds it."""
        ...

    async def release(self, origin: Origin, token: str) -> None:
        """Give the lock up (only if `token` holds it) without a record."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Origin:
    entry: RobotsEntry | None = None
    good: RobotsRules | None = None  # last 2xx copy, served while fetches fail
    good_at: float = 0.0
    failures: int = 0
    task: asyncio.Task[RobotsEntry] | None = None
    answer: asyncio.Future[RobotsEntry] | None = None  # what the task's waiters get
    tenants: set[Tenant] = field(default_factory=set)  # whose requests wait for the task
    job: ParseJob | None = None  # the task's parse, while it is queued or running
    size: int = 0  # approximate bytes the good copy keeps alive (body and parsed rules)
    status: int | None = None  # HTTP status of the last fetch's last hop (shared records)


class RobotsCache:
    """Per-origin robots.txt cache with single-flight fetches, back-off and an LRU bound."""

    def __init__(
        self,
        *,
        user_agent: str,
        max_age: float = MAX_AGE_CAP,
        fetch_timeout: float = 10,
        max_origins: int = 10000,
        ssl: ssl_module.SSLContext | bool | None = None,
        on_fetch: Callable[[str], None] | None = None,
        on_fetch_seconds: Callable[[float], None] | None = None,
        on_lookup: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_age: float = MIN_AGE,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        max_bytes: int = MAX_CACHED_BYTES,
        egress: EgressPolicy | None = None,
        shared: SharedRobots | None = None,
        lock_margin: float = LOCK_MARGIN,
        parse_timeout: float | None = PARSE_TIMEOUT,
        parse_pool: RobotsParsePool | None = None,
    ) -> None:
        self._egress = egress  # None: no destination checks (unit tests of caching only)
        self._user_agent = user_agent
        self._max_age = min(float(max_age), MAX_AGE_CAP)
        self._min_age = min(float(min_age), self._max_age)
        self._fetch_timeout = float(fetch_timeout)
        self._max_origins = max(1, int(max_origins))
        self._max_bytes = int(max_bytes)
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._on_fetch = on_fetch
        self._on_fetch_seconds = on_fetch_seconds  # wall time of each fetch, failures included
        self._on_lookup = on_lookup  # "hit" or "miss" for each `get`
        self._clock = clock
        self._backoff_base = float(backoff_base)
        self._backoff_max = float(backoff_max)
        self._slots: OrderedDict[Origin, _Origin] = OrderedDict()
        self._bytes = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._shared = shared  # None: per-process cache only (state.url memory://)
        self._lock_ttl = self._fetch_timeout + max(0.0, float(lock_margin))
        self._locks: dict[Origin, str] = {}  # shared fetch locks this process holds
        self._parse_timeout = parse_timeout  # None: wait for the parse however long it takes
        self._pool = parse_pool  # this cache's own, closed with it; None: the process-wide one

    def __len__(self) -> int:
        return len(self._slots)

    # -- public ------------------------------------------------------------------------------

    def peek(self, origin: Origin) -> RobotsEntry | None:
        """The fresh entry, or None. Memory only: safe on the per-request hot path."""
        slot = self._slots.get(origin)
        if slot is None or slot.entry is None or self._clock() >= slot.entry.expires_at:
            return None
        self._slots.move_to_end(origin)
        return slot.entry

    def fetch_status(self, origin: Origin) -> int | None:
        """The HTTP status of the last fetch's last hop for `origin` (None: no answer)."""
        slot = self._slots.get(origin)
        return slot.status if slot is not None else None

    async def get(self, origin: Origin, *, tenant: Tenant = None) -> RobotsEntry:
        """The fresh entry, fetching it on a miss; concurrent misses share one fetch, and its
        parse is queued for each `tenant` waiting (the proxy's fair share per tenant)."""
        entry = self.peek(origin)
        self._notify(self._on_lookup, "miss" if entry is None else "hit")
        if entry is not None:
            return entry
        if self._closed:
            return self._failure_entry("error", "robots cache is closed")
        slot = self._slot(origin)
        if slot.task is None or slot.answer is None:
            loop = asyncio.get_running_loop()
            answer = slot.answer = loop.create_future()
            slot.tenants = {tenant}
            task = slot.task = loop.create_task(
                self._refresh(origin, slot), name=f"robots-fetch {origin[0]}://{origin[1]}"
            )
            # also when the task is cancelled before it ever ran (its `finally` never runs)
            task.add_done_callback(lambda _: self._answer(answer, None))
        else:
            answer = slot.answer
            if tenant not in slot.tenants:
                slot.tenants.add(tenant)
                if slot.job is not None:
                    self._parse_pool().queue_for(slot.job, tenant)
        # shield: one impatient caller must not cancel the fetch the others wait on.
        return await asyncio.shield(answer)

    async def close(self) -> None:
        """Stop in-flight fetches and release connections; later `get`s do not fetch."""
        self._closed = True
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._shared is not None:
            for origin, token in list(self._locks.items()):  # let other replicas fetch now
                await self._shared.release(origin, token)
            self._locks.clear()
            await self._shared.close()
        if self._pool is not None:
            self._pool.close(wait=False)  # workers finish their parse and exit; no loop stall

    # -- cache bookkeeping -------------------------------------------------------------------

    def _slot(self, origin: Origin) -> _Origin:
        slot = self._slots.get(origin)
        if slot is None:
            slot = self._slots[origin] = _Origin()
            self._evict()
        else:
            self._slots.move_to_end(origin)
        return slot

    def _evict(self) -> None:
        """Drop least recently used origins beyond the count or byte bound (never the newest)."""
        while len(self._slots) > 1 and (
            len(self._slots) > self._max_origins or self._bytes > self._max_bytes
        ):
            _, old = self._slots.popitem(last=False)
            self._bytes -= old.size

    def _failure_entry(self, result: str, detail: str) -> RobotsEntry:
        now = self._clock()
        return RobotsEntry(ALLOW_ALL, False, None, None, result, now, now, detail)

    # -- fetching ----------------------------------------------------------------------------

    async def _refresh(self, origin: Origin, slot: _Origin) -> RobotsEntry:
        entry: RobotsEntry | None = None
        try:
            if self._shared is None:
                entry = await self._fetch_and_settle(origin, slot)
            else:
                entry = await self._refresh_shared(origin, slot, self._shared)
            return entry
        finally:
            if slot.answer is not None:
                self._answer(slot.answer, entry)
            slot.task, slot.answer, slot.job = None, None, None
            slot.tenants = set()

    def _answer(self, answer: asyncio.Future[RobotsEntry], entry: RobotsEntry | None) -> None:
        """Give the waiters `entry` (a failure entry when the task ended without one)."""
        if not answer.done():
            answer.set_result(entry or self._failure_entry("error", "robots fetch cancelled"))

    async def _refresh_shared(
        self, origin: Origin, slot: _Origin, shared: SharedRobots
    ) -> RobotsEntry:
        """Adopt another replica's fresh record, or fetch (under the lock) and publish."""
        claim = await self._claim(origin, shared)
        if isinstance(claim, SharedRecord):
            entry = await self._adopt(origin, slot, claim)
            if entry is not None:
                return entry
            claim = None  # unusable record: fetch, and replace it
        token = claim
        try:
            entry = await self._fetch_and_settle(origin, slot)
        finally:
            if token is not None:
                self._locks.pop(origin, None)
        record = None if self._closed else self._record(slot, entry)
        if record is not None:
            await shared.publish(origin, record, token)
        elif token is not None:  # closed mid-fetch: nothing to share, let others fetch now
            await shared.release(origin, token)
        return entry

    async def _claim(self, origin: Origin, shared: SharedRobots) -> SharedRecord | str | None:
        """A fresh shared record; or the fetch lock's token (we fetch and publish); or None
        (the store is unavailable, or the lock holder outlived twice its lock: we fetch)."""
        token = secrets.token_hex(16)
        deadline = time.monotonic() + 2 * self._lock_ttl
        pause = POLL_MIN
        while True:
            try:
                claim = await shared.claim(origin, token, self._lock_ttl)
            except Exception:  # the store promises not to raise; robots.txt works without it
                log.exception("shared robots.txt cache failed; fetching per process")
                return None
            if claim is None:
                return None
            if claim.record is not None:
                return claim.record
            if claim.locked:
                self._locks[origin] = token
                return token
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "robots.txt %s://%s:%s: another replica's fetch lock outlived its own "
                    "lifetime; fetching here",
                    *origin,
                )
                return None
            await asyncio.sleep(min(pause, left, claim.wait if claim.wait > 0 else pause))
            pause = min(pause * 2, POLL_MAX)

    def _record(self, slot: _Origin, entry: RobotsEntry) -> SharedRecord | None:
        """`entry` as replicas share it; None when it is already due (nothing to share)."""
        now = self._clock()
        left = entry.expires_at - now
        if left <= 0:
            return None
        has_body = entry.available and entry.body is not None
        stale = entry.result == "stale" and slot.good is not None
        return SharedRecord(
            result=entry.result,
            body=entry.body if has_body else None,
            sha256=entry.sha256 if has_body else None,
            detail=entry.detail,
            status=slot.status,
            age=max(0.0, now - entry.fetched_at),
            lifetime_left=left,
            good_age=max(0.0, now - slot.good_at) if stale else None,
            failures=slot.failures,
        )

    async def _adopt(self, origin: Origin, slot: _Origin, rec: SharedRecord) -> RobotsEntry | None:
        """Make another replica's record this process's entry (None: the record is unusable)."""
        rules: RobotsRules | None = None
        if rec.result in ("ok", "stale"):
            if rec.body is None or len(rec.body) > MAX_BYTES:
                return None
            good = slot.good
            if good is not None and good.sha256 == rec.sha256:
                rules = good  # unchanged file: no second parse
            else:
                try:
                    rules = await self._parse_body(origin, slot, rec.body)
                except Exception as exc:  # the pool may be down; parse() may have a bug
                    log.error("robots.txt parser raised for %s://%s:%s: %r", *origin, exc)
                    return None
            if rules.sha256 != rec.sha256:
                log.warning("shared robots.txt for %s://%s:%s: SHA-256 mismatch, ignored", *origin)
                return None
        elif rec.result not in _FAILURES and rec.result not in _NO_RESTRICTIONS:
            return None
        now = self._clock()
        fetched_at = now - rec.age
        expires = now + min(rec.lifetime_left, self._max_age)
        if rules is not None:
            good_age = rec.good_age if rec.good_age is not None else rec.age
            slot.good, slot.good_at = rules, now - good_age
            entry = RobotsEntry(
                rules, True, rules.sha256, rules.body, rec.result, fetched_at, expires, rec.detail
            )
        elif rec.result in _NO_RESTRICTIONS:
            slot.good = None
            entry = RobotsEntry(
                ALLOW_ALL, True, None, None, rec.result, fetched_at, expires, rec.detail
            )
        elif slot.good is not None and now - slot.good_at <= STALE_LIMIT:
            # The fetching replica had no copy to fall back on; this process has one.
            good = slot.good
            detail = f"{rec.result}: {rec.detail}" if rec.detail else rec.result
            expires = min(expires, slot.good_at + STALE_LIMIT)
            entry = RobotsEntry(good, True, good.sha256, good.body, "stale", now, expires, detail)
        else:
            entry = RobotsEntry(
                ALLOW_ALL, False, None, None, rec.result, fetched_at, expires, rec.detail
            )
        slot.failures = rec.failures
        slot.status = rec.status
        slot.entry = entry
        self._account(origin, slot)
        return entry

    _parse: ClassVar[Callable[[bytes], Awaitable[RobotsRules]] | None] = None
    """A subclass's in-process parser (`crawlguard explain`: one parse, no worker to start).
    None: the worker pool (a thread would take the event loop under the interpreter lock)."""

    def _parse_pool(self) -> RobotsParsePool:
        return self._pool if self._pool is not None else parse_pool.shared()

    async def _parse_body(self, origin: Origin, slot: _Origin, body: bytes) -> RobotsRules:
        """Rules for `body`, parsed at the turns of the tenants waiting. Past `parse_timeout`
        the waiters are answered now (`_answer_late`) and the parse goes on to the end."""
        if self._parse is not None:
            return await self._parse(body)
        pool = self._parse_pool()
        job = slot.job = pool.submit(body, slot.tenants)
        try:
            try:
                rules: RobotsRules = await pool.result(job, self._parse_timeout)
            except TimeoutError:
                self._answer_late(origin, slot)
                rules = await pool.result(job)
            return rules
        finally:
            slot.job = None

    def _answer_late(self, origin: Origin, slot: _Origin) -> None:
        """The parse missed the deadline: this site fails closed (or keeps its stale copy) until
        it lands. Not a fetch failure: no back-off, and the fetched body is parsed all the same."""
        now = self._clock()
        retry = max(1.0, math.ceil(self._parse_timeout or 0.0))
        detail = f"robots.txt not parsed within robots.parse_timeout ({self._parse_timeout:g} s)"
        good = slot.good
        if good is not None and now - slot.good_at <= STALE_LIMIT:
            entry = RobotsEntry(
                good, True, good.sha256, good.body, "stale", now, now + retry, f"{detail}; stale"
            )
        else:
            entry = RobotsEntry(
                ALLOW_ALL, False, None, None, "parse-timeout", now, now + retry, detail
            )
        slot.entry = entry  # answers the next requests from memory until the parse lands
        if slot.answer is not None:
            self._answer(slot.answer, entry)
        log.warning(
            "robots.txt %s://%s:%s: %s; that site answers %s until it is parsed",
            *origin,
            detail,
            "its stale copy" if entry.available else "robots-unreachable",
        )

    async def _fetch_and_settle(self, origin: Origin, slot: _Origin) -> RobotsEntry:
        started = time.perf_counter()
        try:
            fetched = await self._fetch(origin)
        except asyncio.CancelledError:
            # Only close() cancels this task; waiters still get an entry, not an exception.
            fetched = _Fetched("error", detail="robots cache closed during fetch")
        except TimeoutError:
            fetched = _Fetched("timeout", detail=f"no answer within {self._fetch_timeout:g} s")
        except Exception as exc:  # any origin behaviour must end as an entry
            fetched = _Fetched(
                "error", detail=tls_failure(exc) or f"{type(exc).__name__}: {exc}"[:200]
            )
        elapsed = time.perf_counter() - started  # the fetch (all hops), not the parse
        rules: RobotsRules | BaseException | None = None
        if fetched.result == "ok":
            # Parsing a hostile 500 KiB file takes up to ~0.8 s: keep it off the event loop.
            try:
                rules = await self._parse_body(origin, slot, fetched.body or b"")
            except asyncio.CancelledError:
                fetched = _Fetched("error", detail="robots cache closed during parse")
            except Exception as exc:  # parse() promises not to raise; do not trust it blindly
                rules = exc
        entry = self._settle(origin, slot, fetched, rules)
        if entry.result != "ok":
            log.info("robots.txt %s://%s:%s -> %s %s", *origin, entry.result, entry.detail)
        self._notify(self._on_fetch, entry.result)
        self._notify(self._on_fetch_seconds, elapsed)
        return entry

    @staticmethod
    def _notify[T](callback: Callable[[T], None] | None, value: T) -> None:
        """Call a metrics callback; its failure must never change a decision."""
        if callback is None:
            return
        try:
            callback(value)
        except Exception:
            log.exception("robots cache callback failed")

    def _settle(
        self,
        origin: Origin,
        slot: _Origin,
        fetched: _Fetched,
        parsed: RobotsRules | BaseException | None,
    ) -> RobotsEntry:
        """Turn a fetch outcome into the entry in force, updating back-off and the good copy."""
        now = self._clock()
        result = fetched.result
        rules: RobotsRules | None = None
        if result == "ok":
            if isinstance(parsed, RobotsRules):
                rules = parsed
            else:
                log.error("robots.txt parser raised for %s://%s:%s: %r", *origin, parsed)
                name = type(parsed).__name__
                result, fetched.detail = "error", f"parser failed: {name}"
        if result in _FAILURES:
            slot.failures += 1
            delay = min(self._backoff_max, self._backoff_base * 2 ** min(slot.failures - 1, 32))
            if fetched.retry_hint is not None:
                delay = max(delay, min(fetched.retry_hint, self._backoff_max))
            good = slot.good
            if good is not None and now - slot.good_at <= STALE_LIMIT:
                expires = min(now + delay, slot.good_at + STALE_LIMIT)
                detail = f"{result}: {fetched.detail}" if fetched.detail else result
                entry = RobotsEntry(
                    good, True, good.sha256, good.body, "stale", now, expires, detail
                )
            else:
                entry = RobotsEntry(
                    ALLOW_ALL, False, None, None, result, now, now + delay, fetched.detail
                )
        else:
            slot.failures = 0
            lifetime = self._max_age
            if fetched.lifetime is not None:
                lifetime = min(self._max_age, max(self._min_age, fetched.lifetime))
            if rules is not None:
                slot.good, slot.good_at = rules, now
                entry = RobotsEntry(
                    rules, True, rules.sha256, rules.body, "ok", now, now + lifetime
                )
            else:  # 4xx or too many redirects: RFC 9309 "unavailable", no restrictions
                slot.good = None
                entry = RobotsEntry(
                    ALLOW_ALL, True, None, None, result, now, now + lifetime, fetched.detail
                )
        slot.entry = entry
        slot.status = fetched.status
        self._account(origin, slot)
        return entry

    def _account(self, origin: Origin, slot: _Origin) -> None:
        """Count the slot's good copy against the byte bound, then evict beyond the bounds."""
        size = slot.good.footprint if slot.good is not None else 0
        if self._slots.get(origin) is slot:  # not evicted while fetching
            self._bytes += size - slot.size
            slot.size = size
            self._evict()

    def _session_for_fetch(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._egress is not None:
                # Names connect only to the address the egress resolver checked and pinned;
                # its own cache (destinations.dns_cache_ttl) replaces aiohttp's.
                connector = aiohttp.TCPConnector(
                    ssl=self._ssl,
                    limit=100,
                    limit_per_host=2,
                    resolver=self._egress.aiohttp_resolver(),
                    use_dns_cache=False,
                )
            else:
                connector = aiohttp.TCPConnector(ssl=self._ssl, limit=100, limit_per_host=2)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self._user_agent, "Accept": "text/plain, */*;q=0.5"},
                timeout=aiohttp.ClientTimeout(total=None),  # the whole fetch is bounded below
                cookie_jar=aiohttp.DummyCookieJar(),  # no state leaks between origins
                trust_env=False,  # never route through HTTP_PROXY (it may be ourselves)
            )
        return self._session

    async def _fetch(self, origin: Origin) -> _Fetched:
        """GET /robots.txt following up to 5 redirects ourselves, all within fetch_timeout."""
        scheme, host, port = origin
        if scheme not in ("http", "https"):
            return _Fetched("error", detail=f"unsupported scheme {scheme!r}")
        url = URL.build(scheme=scheme, host=host, port=port, path="/robots.txt")
        session = self._session_for_fetch()
        async with asyncio.timeout(self._fetch_timeout):
            for hop in range(MAX_REDIRECTS + 1):
                # aiohttp asks no resolver about IP-literal URLs: admit every hop ourselves,
                # and request it by the canonical host that was admitted.
                url, reason = await self._admit(url)
                if reason is not None:
                    what = "redirect to forbidden destination" if hop else "forbidden destination"
                    return _Fetched("error", detail=f"{what}: {reason}"[:300])
                async with session.get(url, allow_redirects=False) as resp:
                    status = resp.status
                    if 300 <= status < 400:
                        location = resp.headers.get("Location")
                        if not location:
                            return _Fetched(
                                "error", detail=f"HTTP {status} without Location", status=status
                            )
                        if hop == MAX_REDIRECTS:
                            return _Fetched(
                                "redirects",
                                lifetime=_lifetime(resp.headers),
                                detail=f"more than {MAX_REDIRECTS} redirects",
                                status=status,
                            )
                        url = url.join(URL(location))
                        if url.scheme not in ("http", "https") or not url.host:
                            return _Fetched(
                                "error", detail="redirect to a non-HTTP location", status=status
                            )
                        continue
                    if 200 <= status < 300:
                        body = await _read_capped(resp)
                        return _Fetched(
                            "ok", body=body, lifetime=_lifetime(resp.headers), status=status
                        )
                    if status == 429 or status >= 500:
                        return _Fetched(
                            "429" if status == 429 else "5xx",
                            retry_hint=parse_retry_after(
                                resp.headers.get("Retry-After"), time.time()
                            ),
                            detail=f"HTTP {status}",
                            status=status,
                        )
                    if 400 <= status < 500:
                        return _Fetched(
                            "4xx",
                            lifetime=_lifetime(resp.headers),
                            detail=f"HTTP {status}",
                            status=status,
                        )
                    return _Fetched("error", detail=f"unexpected HTTP {status}", status=status)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _admit(self, url: URL) -> tuple[URL, str | None]:
        """The URL with its canonical host, and why the egress policy refuses it (or None)."""
        if self._egress is None:
            return url, None
        host, port = url.raw_host, url.port
        if not host or port is None:
            return url, f"no host or port in {url.scheme}://{host}"
        try:
            host = canonical_host(host)  # one spelling for 0x7f000001, LOCALHOST., …
        except IdentityError as exc:
            return url, str(exc)
        resolution = await self._egress.admit(host, port)
        return url.with_host(host), resolution.reason


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """Read at most MAX_BYTES in chunks; beyond that, drop the connection, never buffer it."""
    buf = bytearray()
    while len(buf) < MAX_BYTES:
        chunk = await resp.content.read(min(_CHUNK, MAX_BYTES - len(buf)))
        if not chunk:
            return bytes(buf)
        buf += chunk
    # Truncated: stop the transfer and drop the partial last line.
    resp.close()
    cut = buf.rfind(b"\n")
    return bytes(buf[: cut + 1]) if cut >= 0 else bytes(buf)


def _cache_directives(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    directives: dict[str, str] = {}
    for header in headers.getall("Cache-Control", ()):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name:
                directives.setdefault(name.strip().lower(), value.strip().strip('"'))
    return directives


def _lifetime(headers: CIMultiDictProxy[str]) -> float | None:
    """Freshness lifetime in seconds from HTTP caching headers, None when they say nothing."""
    cc = _cache_directives(headers)
    if {"no-store", "no-cache", "private"} & cc.keys():
        return 0.0
    lifetime: float | None = None
    for name in ("s-maxage", "max-age"):  # we are a shared cache: s-maxage first
        if name in cc:
            try:
                lifetime = float(int(cc[name]))
            except ValueError:
                lifetime = 0.0  # RFC 9111 §4.2.1: invalid means stale
            break
    else:
        expires = headers.get("Expires")
        if expires is not None:
            exp_ts = parse_http_date(expires)
            date_ts = parse_http_date(headers.get("Date")) or time.time()
            lifetime = 0.0 if exp_ts is None else exp_ts - date_ts
    if lifetime is None:
        return None
    try:
        age = float(int(headers.get("Age", "0")))
    except ValueError:
        age = 0.0
    return max(0.0, lifetime - max(0.0, age))
