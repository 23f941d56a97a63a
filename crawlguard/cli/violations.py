"""`crawlguard violations`, `report` and `robots-txt`: what the configured store has recorded.

All exit 2 with a message on stderr for anything the operator must fix (bad --since, a config
that does not load, a store that cannot be opened), so scripts can tell "nothing found" (exit
0, empty output) from "could not look".
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from crawlguard.policy.decisions import Kind
from crawlguard.policy.records import FIELDS, ViolationRecord
from crawlguard.store import (
    Report,
    StoreError,
    TenantReport,
    ViolationFilter,
    ViolationStore,
    open_store,
    parse_since,
)

TABLE_COLUMNS = ("ts", "tenant", "kind", "action", "count", "method", "url", "rule")
MAX_CELL = {"url": 100, "rule": 60}
# What --kind takes: every decision kind a violation record can have (never `allowed`).
VIOLATION_KINDS = tuple(k.value for k in Kind if k is not Kind.ALLOWED)
SINCE_FORMS = (
    "ISO 8601 (e.g. 2024-05-01T12:00:00Z; UTC unless an offset is given) or a duration back "
    "from now like 30m, 24h, 7d (units s, m, h, d, w; combined as in 1h30m)"
)


DEFAULT_CONFIG = "config/crawlguard.yaml"
"""What `make run` starts the proxy with: operator commands read the same config by default."""
CONFIG_HELP = f"crawlguard YAML config (default {DEFAULT_CONFIG}, as `make run` uses)"
FOLLOW_POLL_SECONDS = 1.0
FOLLOW_BACKLOG = 10
"""--follow shows this many recent records first (unless --limit says otherwise), as tail -f."""


class _Fail(Exception):
    """An operator-facing error: printed on stderr, exit 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(sub: Any) -> None:  # argparse._SubParsersAction
    p = sub.add_parser(
        "violations",
        help="list recorded violations, newest first",
        description="List the violations recorded in the configured store, newest first. "
        "Exit 0 (also when nothing matches), 2 on bad input or an unusable store.",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help=CONFIG_HELP)
    p.add_argument(
        "--tenant",
        metavar="T",
        help="only this tenant (one in the config or in the store; anything else: exit 2)",
    )
    p.add_argument(
        "--kind",
        metavar="K",
        help="only this decision kind: " + ", ".join(VIOLATION_KINDS),
    )
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only records at or after WHEN: ISO 8601 (UTC unless an offset is given) or a "
        "duration back from now such as 30m, 24h, 7d (-7d is read as 7d)",
    )
    p.add_argument(
        "--until",
        metavar="WHEN",
        help="only records before WHEN (exclusive); the same forms as --since",
    )
    p.add_argument("--limit", type=_positive_int, metavar="N", help="at most N records")
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help=f"show the latest records (--limit, default {FOLLOW_BACKLOG}) oldest first, then "
        "print new ones as the store receives them until Ctrl-C (json: one object per line)",
    )
    p.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default, for people), json (one array of records), csv (header row first)",
    )
    p.set_defaults(func=run_violations)
    p.__class__ = _DashValueParser  # add_parser takes no parser class

    r = sub.add_parser(
        "report",
        help="per-tenant summary: requests by decision, violations by kind",
        description="Summarise the configured store per tenant: requests by decision and "
        "violations by kind. Request counts are kept in hourly buckets and flushed by the "
        "proxy every few seconds, so --since is rounded down to the hour for them.",
    )
    r.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help=CONFIG_HELP)
    r.add_argument(
        "--since",
        metavar="WHEN",
        help="ISO 8601 or a duration back from now such as 30m, 24h, 7d (default: everything "
        "recorded)",
    )
    r.add_argument("--format", choices=("table", "json"), default="table")
    r.set_defaults(func=run_report)
    r.__class__ = _DashValueParser

    b = sub.add_parser(
        "robots-txt",
        help="print the robots.txt body a violation record's robots_sha256 names",
        description="Print, byte for byte, the robots.txt body that was in force for a "
        "recorded violation (its robots_sha256). Exit 0, 1 if the store does not hold it, "
        "2 on bad input or an unusable store.",
    )
    b.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help=CONFIG_HELP)
    b.add_argument("sha256", metavar="SHA256", help="the record's robots_sha256 (64 hex digits)")
    b.set_defaults(func=run_robots_txt)


def _open(config_path: str) -> tuple[ViolationStore, list[str]]:
    """The configured store and the configured tenant ids (so idle tenants show in reports)."""
    from crawlguard.config import ConfigError, load_config

    if config_path == DEFAULT_CONFIG and not Path(config_path).exists():
        raise _Fail(f"no --config given and no {DEFAULT_CONFIG} in {Path.cwd()}; "
                    "name the proxy's config with --config PATH")  # fmt: skip
    try:
        cfg = load_config(config_path, secrets=False)
    except ConfigError as exc:
        raise _Fail(str(exc)) from None
    missing = _missing_sqlite_file(cfg.store.url)
    if missing is not None:  # opening it would create a new, empty store and report nothing
        raise _Fail(f"no violation store at {missing} (store.url {cfg.store.url}); "
                    "run from the directory the proxy runs in, or fix store.url")  # fmt: skip
    from crawlguard.tenancy import TenancyError, managed_tenants

    try:
        return open_store(cfg.store.url), [t.id for t in managed_tenants(cfg)]
    except StoreError as exc:
        raise _Fail(str(exc)) from None
    except TenancyError as exc:
        raise _Fail(f"tenancy.source: store: {exc.message}") from None


def _missing_sqlite_file(url: str) -> str | None:
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/"):
        return None  # other stores, and malformed URLs (open_store explains those)
    path = Path(rest[1:])
    return None if path.exists() else str(path)


def _fail(command: str, message: str) -> int:
    print(f"crawlguard {command}: {message}", file=sys.stderr)
    return 2


_NEGATIVE_DURATION = re.compile(r"^\s*-\s*(?:\d+[smhdw])+\s*$", re.IGNORECASE)


def _since(value: str | None, flag: str = "--since") -> str | None:
    """--since/--until as a store bound; a value it cannot read fails with the forms it can.
    `-1d` means what `1d` does (a duration is always back from now)."""
    if value is None:
        return None
    text = value.strip().removeprefix("-") if _NEGATIVE_DURATION.match(value) else value
    try:
        return parse_since(text)
    except ValueError:  # also a duration too long, or one with thousands of digits
        what = flag.removeprefix("--")
        raise _Fail(f"invalid {what} {value!r} for {flag}: expected {SINCE_FORMS}") from None


class _DashValueParser(argparse.ArgumentParser):
    """Reads `--since -1d` as `--since=-1d`: argparse takes an argument that starts with `-`
    for an option (and fails: "expected one argument") unless it looks like a plain number."""

    def _parse_optional(self, arg_string: str) -> Any:
        if _NEGATIVE_DURATION.match(arg_string) or _NEGATIVE_ISO.match(arg_string):
            return None  # a value, not an option
        return super()._parse_optional(arg_string)


_NEGATIVE_ISO = re.compile(r"^-\d{4}-\d\d")


def _suggest(value: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(value, valid, n=1, cutoff=0.6)
    if not near:
        near = [v for v in valid if v.casefold() == value.casefold()]
    return f" (did you mean {near[0]!r}?)" if near else ""


def _recorded(store: ViolationStore) -> tuple[set[str], set[str]]:
    """Tenant ids and violation kinds the store holds (tenants since removed from the config,
    kinds since retired are still valid filters)."""
    report = store.report()
    kinds = {kind for t in report.tenants.values() for kind in t.violations}
    return set(report.tenants), kinds


def _check_filters(
    store: ViolationStore, configured: list[str], tenant: str | None, kind: str | None
) -> str | None:
    """Refuse a --tenant or --kind that names nothing crawlguard knows: a typo must not read
    as "no violations". Returns the kind as the store spells it."""
    recorded: tuple[set[str], set[str]] | None = None
    if kind is not None:
        kind = kind.strip().lower()
        if kind not in VIOLATION_KINDS:
            recorded = _recorded(store)
            if kind not in recorded[1]:
                valid = [*VIOLATION_KINDS, *sorted(recorded[1] - set(VIOLATION_KINDS))]
                why = (
                    "allowed requests are not violations (`crawlguard report` counts them)"
                    if kind == Kind.ALLOWED.value
                    else f"unknown --kind {kind!r}{_suggest(kind, valid)}"
                )
                raise _Fail(f"{why}; valid kinds: {', '.join(valid)}")
    if tenant is not None and tenant not in configured:
        recorded = recorded or _recorded(store)
        if tenant not in recorded[0]:
            valid = sorted({*configured, *recorded[0]})
            listed = ", ".join(_cell(t) for t in valid) if valid else "none configured or recorded"
            raise _Fail(
                f"unknown --tenant {tenant!r}{_suggest(tenant, valid)}; valid tenants "
                f"(in the config or the store): {listed}"
            )
    return kind


def _query(store: ViolationStore, flt: ViolationFilter, limit: int | None) -> list[ViolationRecord]:
    """Newest first; `query` when there is no upper bound, else the pages `--until` needs."""
    if flt.until is None:
        return store.query(tenant=flt.tenant, kind=flt.kind, since=flt.since, limit=limit)
    records: list[ViolationRecord] = []
    after = None
    while limit is None or len(records) < limit:
        want = 1000 if limit is None else min(1000, limit - len(records))
        page = store.page(flt, limit=want, after=after)
        records += [item.record for item in page.items]
        if page.next is None:
            break
        after = page.next
    return records


def run_violations(args: argparse.Namespace) -> int:
    try:
        since = _since(args.since)
        until = _since(args.until, "--until")
        if args.follow and until is not None:
            raise _Fail("--follow prints records as they arrive: it cannot have an --until")
        if since is not None and until is not None and until <= since:
            raise _Fail(f"--until ({until}) must be after --since ({since})")
        store, configured = _open(args.config)
        try:
            kind = _check_filters(store, configured, args.tenant, args.kind)
            flt = ViolationFilter(tenant=args.tenant, kind=kind, since=since, until=until)
            if args.follow:
                return _follow(store, flt, args.limit or FOLLOW_BACKLOG, args.format)
            records = _query(store, flt, args.limit)
        finally:
            store.close()
    except (_Fail, StoreError, ValueError) as exc:
        return _fail("violations", str(exc))
    if args.format == "json":
        json.dump([r.to_dict() for r in records], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(FIELDS)
        for rec in records:
            d = rec.to_dict()
            writer.writerow(["" if d[f] is None else d[f] for f in FIELDS])
    else:
        print_table(records)
    return 0


def _follow(store: ViolationStore, flt: ViolationFilter, backlog: int, fmt: str) -> int:
    """Print the last `backlog` records oldest first, then poll the store for newer ones (by
    ``(ts, id)``, so records sharing a timestamp are neither lost nor repeated) until Ctrl-C."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(FIELDS)
    first = True

    def emit(records: list[ViolationRecord]) -> None:
        nonlocal first
        for rec in records:
            d = rec.to_dict()
            if fmt == "json":
                print(json.dumps(d, ensure_ascii=False))
            elif fmt == "csv":
                writer.writerow(["" if d[f] is None else d[f] for f in FIELDS])
        if fmt == "table" and records:
            print_table(records, header=first)
            first = False
        sys.stdout.flush()

    try:
        items = store.page(flt, limit=backlog).items
        last = (items[0].record.ts, items[0].id) if items else None
        emit([item.record for item in reversed(items)])
        if fmt == "table" and not items:
            print("waiting for violations (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(FOLLOW_POLL_SECONDS)
            since = flt.since if last is None else max(flt.since or last[0], last[0])
            fresh: list[tuple[str, int, ViolationRecord]] = []
            after = None
            while True:
                page = store.page(
                    ViolationFilter(flt.tenant, flt.kind, since=since), limit=500, after=after
                )
                fresh += [
                    (i.record.ts, i.id, i.record)
                    for i in page.items
                    if last is None or (i.record.ts, i.id) > last
                ]
                if page.next is None or (last is not None and page.next <= last):
                    break
                after = page.next
            if fresh:
                fresh.sort(key=lambda t: (t[0], t[1]))
                last = (fresh[-1][0], fresh[-1][1])
                emit([rec for _, _, rec in fresh])
    except KeyboardInterrupt:
        return 0


def run_robots_txt(args: argparse.Namespace) -> int:
    digest = args.sha256.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return _fail("robots-txt", f"{args.sha256!r} is not a SHA-256 (64 hex digits)")
    try:
        store, _ = _open(args.config)
        try:
            body = store.robots_body(digest)
        finally:
            store.close()
    except (_Fail, StoreError) as exc:
        return _fail("robots-txt", str(exc))
    if body is None:
        print(f"crawlguard robots-txt: no robots.txt body {digest} in the store", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


def _cell(value: object, width: int | None = None) -> str:
    """One line, no control characters: URLs and robots lines come from crawlers and origins
    and must not be able to move the cursor or recolour an operator's terminal."""
    text = "-" if value is None else str(value)
    text = "".join(c if unicodedata.category(c)[0] != "C" else _escape(c) for c in text)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def print_table(records: list[ViolationRecord], *, header: bool = True) -> None:
    if not records:
        print("no violations recorded that match")
        return
    rows = [
        [_cell(getattr(rec, col), MAX_CELL.get(col)) for col in TABLE_COLUMNS] for rec in records
    ]
    head = [c.upper() for c in TABLE_COLUMNS]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows] if header else rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def run_report(args: argparse.Namespace) -> int:
    try:
        since = _since(args.since)
        store, configured = _open(args.config)
        try:
            report = store.report(since=since)
        finally:
            store.close()
    except (_Fail, StoreError, ValueError) as exc:
        return _fail("report", str(exc))
    tenants = {tid: TenantReport() for tid in configured}
    tenants.update(report.tenants)  # also tenants since removed from the config
    report = Report(since=report.since, tenants=tenants)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report)
    return 0


def print_report(report: Report) -> None:
    print(f"since {report.since}" if report.since else "all recorded time")
    if not report.tenants:
        print("no tenants and nothing recorded")
        return
    # Summary first: HELD (requests delay pacing held, then forwarded) is apart from
    # VIOLATIONS, since a held request is paced as the tenant asked, not a violation.
    header = ["TENANT", "REQUESTS", "HELD", "VIOLATIONS"]
    rows = [
        [_cell(tid), str(t.requests_total), str(t.held), str(t.violations_total)]
        for tid, t in sorted(report.tenants.items())
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))
    for tid, t in sorted(report.tenants.items()):
        print(f"\n{_cell(tid)}")
        print(f"  {'requests':<26}{t.requests_total:>8}")
        for decision, n in t.requests.items():
            print(f"    {_cell(decision):<24}{n:>8}")
        print(f"  {'violations':<26}{t.violations_total:>8}")
        for kind, n in t.violations.items():
            print(f"    {_cell(kind):<24}{n:>8}")
