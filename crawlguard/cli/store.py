"""`crawlguard store export|import`: move violation records between stores
(docs/operators/store.md).

The way from the embedded SQLite to a shared PostgreSQL when a platform outgrows one machine,
and from one PostgreSQL to another. Export writes JSON lines, oldest first: one record per
line, the record fields (SPEC "Violations") plus its `uid`, read in keyset pages, so memory
stays constant whatever the store holds. Import writes them in batches, one transaction each,
idempotent by uid: running it twice, or over an overlapping export, adds nothing twice, and
the roll-ups grow only by the records actually inserted.

Exit 0 on success; 1 when the input has a bad line (its number named; the batches before it
are committed, nothing of its own batch is); 2 for what the operator must fix first (a config
that does not load, a store that cannot be opened, a bad --since, an unreadable file).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

from crawlguard.policy.records import FIELD_LIMITS, FIELDS, ViolationRecord, cut
from crawlguard.store import (
    PageKey,
    StoreError,
    ViolationStore,
    normalize_ts,
    open_store,
    parse_since,
    url_host,
)
from crawlguard.store.rollup import hour_start
from crawlguard.store.sqlite import SQLiteStore

EXPORT_PAGE = 5_000  # records read per query
IMPORT_BATCH = 20_000  # records written per transaction (a commit each: FULL sync)

_REQUIRED = ("ts", "tenant", "kind", "action", "method", "url")
_TEXT_OPTIONAL = ("user_agent", "rule", "robots_sha256", "reason")
_NUMBERS = ("crawl_delay", "delay_seconds")
_TIMES = ("first_ts", "last_ts")
_KNOWN = frozenset((*FIELDS, "uid"))
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class _Fail(Exception):
    """An operator-facing error: printed on stderr, exit 2."""


class BadLine(ValueError):
    """A line of an import that is not a record; `line` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class ImportResult:
    read: int
    inserted: int

    @property
    def skipped(self) -> int:
        return self.read - self.inserted


def register(sub: Any) -> None:  # argparse._SubParsersAction
    p = sub.add_parser(
        "store",
        help="export or import violation records (move a store)",
        description="Move violation records between stores: export them as JSON lines, "
        "import them (idempotent by uid) into the store of another config.",
    )
    actions = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    e = actions.add_parser(
        "export",
        help="write every record as JSON lines to stdout, oldest first",
        description="Write the configured store's records to stdout as JSON lines, oldest "
        "first: one record per line, its fields plus its uid. Streams: constant memory.",
    )
    e.add_argument("--config", required=True, metavar="PATH", help="crawlguard YAML config")
    e.add_argument(
        "--since",
        metavar="WHEN",
        help="only records at or after WHEN: ISO 8601 or a duration back from now (7d, 12h)",
    )
    e.set_defaults(func=run_export)
    i = actions.add_parser(
        "import",
        help="read JSON lines (an export) into the configured store",
        description="Read records (a `crawlguard store export`) into the configured store in "
        "batches, one transaction each. Idempotent by uid: a record already stored is "
        "skipped. A bad line stops the import with its number; the batches before it stay.",
    )
    i.add_argument("--config", required=True, metavar="PATH", help="crawlguard YAML config")
    i.add_argument("file", metavar="FILE", help="the JSON lines to import, or - for stdin")
    i.set_defaults(func=run_import)


# -- export ---------------------------------------------------------------------------------


def export_lines(store: ViolationStore, since: str | None = None) -> Iterator[str]:
    """The store's records as JSON lines (no newline), oldest first, page by page."""
    page_of = store.export_page
    after: PageKey | None = None
    while True:
        page = page_of(since=since, after=after, limit=EXPORT_PAGE)
        for _, uid, rec in page:
            yield json.dumps({**rec.to_dict(), "uid": uid}, separators=(",", ":"))
        if len(page) < EXPORT_PAGE:
            return
        after = page[-1][0]


def run_export(args: argparse.Namespace) -> int:
    try:
        since = _since(args.since)
        store = _open(args.config)
    except _Fail as exc:
        return _fail("export", str(exc))
    try:
        out = sys.stdout
        for line in export_lines(store, since):
            out.write(line + "\n")
        out.flush()
    except StoreError as exc:
        return _fail("export", str(exc))
    finally:
        store.close()
    return 0


# -- import ---------------------------------------------------------------------------------


def parse_line(text: str, number: int) -> tuple[str, ViolationRecord]:
    """One export line -> (uid, record); BadLine naming the line and the field otherwise."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadLine(number, f"not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise BadLine(number, "expected a JSON object (one record)")
    if not _KNOWN.issuperset(obj):
        unknown = sorted(set(obj) - _KNOWN)
        raise BadLine(number, f"unknown field {unknown[0]!r}")
    raw_uid = obj.get("uid")
    if not isinstance(raw_uid, str):
        raise BadLine(number, "field 'uid': expected a UUID string")
    try:
        uid = raw_uid if _HEX32.match(raw_uid) else uuid.UUID(raw_uid).hex
    except ValueError:
        raise BadLine(number, f"field 'uid': {raw_uid!r} is not a UUID") from None
    for name in _REQUIRED:
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            raise BadLine(number, f"field {name!r}: expected a non-empty string")
    for name in _TEXT_OPTIONAL:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise BadLine(number, f"field {name!r}: expected a string or null")
    for name in _NUMBERS:
        value = obj.get(name)
        ok = value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
        if not ok:
            raise BadLine(number, f"field {name!r}: expected a number or null")
    retry = obj.get("retry_after")
    if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool)):
        raise BadLine(number, "field 'retry_after': expected a whole number or null")
    count = obj.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise BadLine(number, "field 'count': expected a whole number >= 1")
    for name in ("ts", *_TIMES):
        value = obj.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadLine(number, f"field {name!r}: expected an ISO 8601 timestamp")
        try:
            obj[name] = normalize_ts(value)
        except ValueError as exc:
            raise BadLine(number, f"field {name!r}: {exc}") from None
    del obj["uid"]
    return uid, ViolationRecord(**obj)  # every key checked above


_TEXT_LIMITS = tuple(
    (1 + FIELDS.index(name), limit) for name, limit in FIELD_LIMITS.items()
)  # positions in an import row
_SHA_AT = 1 + FIELDS.index("robots_sha256")
_URL_AT = 1 + FIELDS.index("url")
_loads = json.loads


def import_row(text: str, number: int) -> tuple[Any, ...]:
    """One export line -> an import row: (uid, the FIELDS in order, host, hour start), with
    the record bounded and its times canonical, as `record_many` would store it. A fast path
    for well-formed lines (no record object, no per-field regex); anything it does not accept
    plainly goes through `parse_line`, which names the line and the field or accepts the
    unusual spelling (a dashed uid, an offset timestamp)."""
    try:
        obj = _loads(text)
    except ValueError:
        obj = None
    if type(obj) is not dict or not _KNOWN.issuperset(obj):
        return _row(*parse_line(text, number))
    g = obj.get
    uid = g("uid")
    ts, tenant, kind, action = g("ts"), g("tenant"), g("kind"), g("action")
    method, url, count = g("method"), g("url"), g("count", 1)
    first, last = g("first_ts"), g("last_ts")
    crawl_delay, delay, retry = g("crawl_delay"), g("delay_seconds"), g("retry_after")
    ua, rule, sha, reason = g("user_agent"), g("rule"), g("robots_sha256"), g("reason")
    try:
        ok = (
            type(uid) is str
            and len(uid) == 32
            and _HEX32.match(uid) is not None
            and type(tenant) is str
            and tenant != ""
            and type(kind) is str
            and kind != ""
            and type(action) is str
            and action != ""
            and type(method) is str
            and method != ""
            and type(url) is str
            and url != ""
            and type(count) is int
            and count >= 1
            and (ua is None or type(ua) is str)
            and (rule is None or type(rule) is str)
            and (sha is None or type(sha) is str)
            and (reason is None or type(reason) is str)
            and (retry is None or type(retry) is int)
            and (crawl_delay is None or _finite(crawl_delay))
            and (delay is None or _finite(delay))
            and type(ts) is str
            and ts != ""
        )
        if ok:
            ts = normalize_ts(ts)
            first = _time_or_none(first)
            last = _time_or_none(last)
    except ValueError:
        ok = False
    if not ok:
        return _row(*parse_line(text, number))
    row = [
        uid, ts, tenant, kind, action, method, url, ua, rule, crawl_delay, retry,
        sha.lower() if sha else None, delay, reason, count, first, last,
    ]  # fmt: skip
    for at, limit in _TEXT_LIMITS:
        value = row[at]
        if value is not None and len(value) > limit:
            row[at] = cut(value, limit)
    return (*row, url_host(row[_URL_AT]), hour_start(ts))


def _time_or_none(value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise ValueError("not a timestamp")
    return normalize_ts(value)


def _finite(value: object) -> bool:
    return (type(value) is float and math.isfinite(value)) or type(value) is int


def _row(uid: str, rec: ViolationRecord) -> tuple[Any, ...]:
    """The slow path's record as an import row."""
    row = [uid, *(getattr(rec.bounded(), f) for f in FIELDS)]
    if row[_SHA_AT]:
        row[_SHA_AT] = row[_SHA_AT].lower()
    return (*row, url_host(row[_URL_AT]), hour_start(row[1]))


def _batches(lines: Iterable[str]) -> Iterator[list[tuple[Any, ...]]]:
    """Import rows in batches; a bad line raises BadLine before its batch is handed out."""
    batch: list[tuple[Any, ...]] = []
    append = batch.append
    for number, text in enumerate(lines, 1):
        if not text or text.isspace():
            continue  # a blank line (e.g. a trailing one) is no record
        append(import_row(text, number))
        if len(batch) >= IMPORT_BATCH:
            yield batch
            batch = []
            append = batch.append
    if batch:
        yield batch


def _writer(store: ViolationStore) -> Callable[[list[tuple[Any, ...]]], int | None]:
    """SQLite takes the rows as they are (set-based, `SQLiteStore.import_rows`); any other
    store writes them as records through `record_many`, idempotent by the same uids."""
    if isinstance(store, SQLiteStore):
        return store.import_rows

    def write(rows: list[tuple[Any, ...]]) -> int | None:
        items = [(ViolationRecord(*row[1 : 1 + len(FIELDS)]), None) for row in rows]
        return store.record_many(items, [row[0] for row in rows])

    return write


def import_lines(store: ViolationStore, lines: Iterable[str]) -> ImportResult:
    """Import JSON lines into `store`, one transaction per batch. The next batch is parsed
    while the last one is written (SQLite and psycopg release the GIL while they work). On a
    bad line BadLine is raised once the batches before it are committed; its `done` holds
    what they did."""
    read = inserted = 0
    write = _writer(store)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import") as pool:
        pending: Future[int | None] | None = None
        pending_size = 0

        def settle() -> None:
            nonlocal pending, read, inserted
            if pending is not None:
                inserted += int(pending.result() or 0)
                read += pending_size
                pending = None

        try:
            for batch in _batches(lines):
                settle()
                pending = pool.submit(write, batch)
                pending_size = len(batch)
            settle()
        except BadLine as exc:
            settle()
            exc.done = ImportResult(read, inserted)  # type: ignore[attr-defined]
            raise
    return ImportResult(read, inserted)


def run_import(args: argparse.Namespace) -> int:
    try:
        store = _open(args.config)
    except _Fail as exc:
        return _fail("import", str(exc))
    try:
        stream: IO[str]
        if args.file == "-":
            stream = sys.stdin
        else:
            try:
                stream = open(args.file, encoding="utf-8")  # noqa: SIM115 (closed below)
            except OSError as exc:
                return _fail("import", f"cannot read {args.file}: {exc.strerror or exc}")
        try:
            result = import_lines(store, stream)
        except BadLine as exc:
            done: ImportResult = exc.done  # type: ignore[attr-defined]
            print(
                f"crawlguard import: {exc}; nothing of that line's batch was imported "
                f"(before it: read {done.read}, inserted {done.inserted}, "
                f"skipped {done.skipped})",
                file=sys.stderr,
            )
            return 1
        except UnicodeDecodeError as exc:
            return _fail("import", f"{args.file} is not UTF-8 text: {exc.reason}")
        finally:
            if stream is not sys.stdin:
                stream.close()
    except StoreError as exc:
        return _fail("import", str(exc))
    finally:
        store.close()
    print(f"read {result.read}, inserted {result.inserted}, skipped {result.skipped}")
    return 0


# -- shared ---------------------------------------------------------------------------------


def _open(config_path: str) -> ViolationStore:
    from crawlguard.config import ConfigError, load_config

    try:
        cfg = load_config(config_path, secrets=False)
    except ConfigError as exc:
        raise _Fail(str(exc)) from None
    try:
        return open_store(cfg.store.url)
    except StoreError as exc:
        raise _Fail(str(exc)) from None


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise _Fail(f"--since: {exc}") from None


def _fail(command: str, message: str) -> int:
    print(f"crawlguard store {command}: {message}", file=sys.stderr)
    return 2
