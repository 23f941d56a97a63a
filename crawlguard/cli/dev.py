"""`crawlguard dev`: the proxy on this machine for a crawler developer.

No tenant authentication (so it listens on loopback only), one local tenant `dev` with the
developer's product token, private destinations and every port allowed (local test sites
work), memory:// pacing state and a SQLite store of its own. Every decision is printed live,
one line per request, and a summary of the violations by kind, with how to fix each, is
printed when it stops (SIGINT / SIGTERM). The proxy is the same code `crawlguard run` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import logging
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from crawlguard.config import Config, ConfigError, parse_config
from crawlguard.policy.decisions import ADVICE, Action, Kind
from crawlguard.policy.pipeline import RequestInfo
from crawlguard.policy.plan import NOT_VIOLATIONS, Plan
from crawlguard.policy.tenants import TenantRuntime

TENANT = "dev"
DEFAULT_CONFDIR = "var/mitmproxy"  # the same CA `crawlguard ca` shows
DEFAULT_STORE = "var/dev/crawlguard-dev.db"

GREEN, YELLOW, RED, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[0m"


def register(sub: Any) -> None:
    dev = sub.add_parser(
        "dev",
        help="local proxy for crawler developers: no auth, decisions printed live",
        description="Run crawlguard locally for one crawler: no proxy credentials, 127.0.0.1 "
        "only, one tenant 'dev' with your product token, local sites allowed. Prints one line "
        "per request and, on Ctrl-C, a summary of the violations with how to fix each.",
    )
    dev.add_argument(
        "--product-token",
        required=True,
        action="append",
        dest="product_tokens",
        metavar="TOKEN",
        help="your crawler's product token, as in its user agent (repeat for more than one)",
    )
    dev.add_argument(
        "--mode",
        choices=("enforce", "monitor"),
        default="enforce",
        help="enforce: refuse what breaks the rules (default); monitor: forward "
        "everything, print what would have been refused",
    )
    dev.add_argument(
        "--pacing",
        choices=("reject", "delay"),
        default="reject",
        help="too soon for the Crawl-delay: 429 (reject, default) or hold the "
        "request until its slot (delay)",
    )
    dev.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address; loopback only (127.0.0.1, ::1, localhost)",
    )
    dev.add_argument("--port", type=int, default=8080, help="proxy port (0: any free one)")
    dev.add_argument(
        "--admin-port",
        type=int,
        default=9464,
        help="admin port: metrics and dashboard (0: any free one)",
    )
    dev.add_argument(
        "--confdir",
        default=DEFAULT_CONFDIR,
        help=f"where crawlguard's CA lives (default {DEFAULT_CONFDIR}, the one "
        "`crawlguard ca` shows)",
    )
    dev.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="FILE",
        help=f"SQLite file for the violation records (default {DEFAULT_STORE})",
    )
    dev.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="extra CA certificates (PEM) to verify sites with: for local HTTPS "
        "test sites that have their own CA",
    )
    dev.set_defaults(func=cmd_dev)


# -- the config dev mode runs with --------------------------------------------------------------


def loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dev_config(args: argparse.Namespace, admin_token: str) -> Config:
    """The config `crawlguard dev` runs with; ConfigError says which flag is wrong."""
    from crawlguard.policy.ua import product_token_problem

    if not loopback_host(args.host):
        raise ConfigError(
            f"--host {args.host}: crawlguard dev listens on loopback only (127.0.0.1, ::1, "
            "localhost): it asks for no proxy credentials, so anyone who could reach it could "
            "crawl through it. For a shared proxy, use `crawlguard run --config FILE`."
        )
    host = args.host.strip("[]")
    for token in args.product_tokens:
        if problem := product_token_problem(token):
            raise ConfigError(f"--product-token {token!r}: {problem}")
    for flag, port in (("--port", args.port), ("--admin-port", args.admin_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{flag} {port}: must be 0-65535")
    upstream = None
    if args.upstream_ca:
        path = Path(args.upstream_ca).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"--upstream-ca {args.upstream_ca}: no such file")
        upstream = str(path)
    data = {
        "proxy": {
            "listen_host": host,
            "listen_port": args.port,
            "confdir": str(Path(args.confdir).expanduser().resolve()),
            "upstream_ca_file": upstream,
        },
        "admin": {
            "listen_host": host,
            "port": args.admin_port,
            "token_sha256": hashlib.sha256(admin_token.encode()).hexdigest(),
        },
        "store": {"url": "sqlite:///" + str(Path(args.store).expanduser().resolve())},
        "state": {"url": "memory://"},
        "destinations": {"allow_private": True, "allowed_ports": ["1-65535"]},
        "tenants": [
            {
                "id": TENANT,
                # never used: dev mode takes every request as this tenant's (Runtime.open_tenant)
                "token_sha256": hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
                "product_tokens": list(dict.fromkeys(args.product_tokens)),
                "mode": args.mode,
                "pacing": args.pacing,
            }
        ],
    }
    return parse_config(data, "crawlguard dev")


# -- what is printed ----------------------------------------------------------------------------


def use_colour(stream: TextIO) -> bool:
    """Colour on a terminal only, and never with NO_COLOR set (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class KindTally:
    count: int = 0
    action: str = ""
    example: str = ""  # the first one: method, URL and rule


class Reporter:
    """One line per decision as it happens, and the summary at the end."""

    def __init__(self, out: TextIO, *, colour: bool, mode: str) -> None:
        self.out: TextIO | None = out
        self.colour = colour
        self.mode = mode
        self.requests = 0
        self.decisions: Counter[str] = Counter()
        self.violations: dict[str, KindTally] = {}
        self.held = 0
        # held for, or refused by, capacity the platform shares (the site's budget across
        # tenants, the held pool): not violations (crawlguard.policy.plan.NOT_VIOLATIONS)
        self.shared: Counter[str] = Counter()
        # why an origin's robots.txt could not be fetched (set by cmd_dev from the Runtime)
        self.robots_detail: Callable[[RequestInfo], str | None] = lambda info: None
        self._explained: set[str] = set()  # origins whose robots.txt failure was explained

    def write(self, text: str) -> None:
        if self.out is None:
            return
        try:
            print(text, file=self.out, flush=True)
        except (BrokenPipeError, OSError, ValueError):
            self.out = None  # the reader went away; the proxy keeps running

    def paint(self, text: str, colour: str) -> str:
        return f"{colour}{text}{RESET}" if self.colour else text

    def __call__(self, tenant: TenantRuntime, step: Plan, info: RequestInfo) -> None:
        d = step.decision
        kind = d.kind.value
        self.requests += 1
        if step.hold:
            label, colour, wait = f"held {kind}", YELLOW, d.delay_seconds
            if d.kind in NOT_VIOLATIONS:
                self.shared[kind] += 1
            else:
                self.held += 1
        elif d.kind in NOT_VIOLATIONS:
            label, colour, wait = f"waited {kind}", YELLOW, d.retry_after
            self.shared[kind] += 1
        elif d.allowed:
            label, colour, wait = "allowed", GREEN, None
        elif step.refuse:
            label, colour, wait = f"blocked {kind}", RED, d.retry_after
        else:  # monitor: forwarded, recorded as logged
            label, colour, wait = f"logged {kind}", YELLOW, d.retry_after
        self.decisions["held" if step.hold else kind] += 1
        if not d.allowed and not step.hold and d.kind not in NOT_VIOLATIONS:
            action = step.record.value if step.record is not None else Action.BLOCKED.value
            tally = self.violations.setdefault(kind, KindTally(action=action))
            tally.count += 1
            if not tally.example:
                tally.example = f"{info.method} {info.url}" + (f" ({d.rule})" if d.rule else "")
        parts = [
            time.strftime("%H:%M:%S"),
            self.paint(label.ljust(26), colour),
            f"{info.method} {info.url}",
        ]
        if d.rule:
            parts.append(f"rule: {d.rule}")
        if wait is not None:
            parts.append(f"wait {wait:g} s")
        self.write("  ".join(parts))
        if d.kind is Kind.ROBOTS_UNREACHABLE and info.target is not None:
            self.explain_robots(info)

    def explain_robots(self, info: RequestInfo) -> None:
        """Once per origin: why its robots.txt could not be fetched, and the likely fix."""
        if info.origin in self._explained or not (detail := self.robots_detail(info)):
            return
        self._explained.add(info.origin)
        self.write(f"{' ' * 10}{info.origin}/robots.txt: {detail}")
        if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail:
            self.write(
                f"{' ' * 10}crawlguard did not accept the site's certificate; a local test "
                "site with its own CA: start crawlguard dev with --upstream-ca FILE"
            )

    def note(self, text: str) -> None:
        """A line that is not a decision (a TLS handshake that failed)."""
        label = self.paint("tls-failed".ljust(26), RED)
        self.write(f"{time.strftime('%H:%M:%S')}  {label}  {text}")

    def summary(self) -> str:
        total = sum(t.count for t in self.violations.values())
        allowed = self.decisions.get(Kind.ALLOWED.value, 0)
        lines = [
            "",
            f"crawlguard dev summary: {self.requests} request(s), {allowed} allowed, "
            f"{total} violation(s)"
            + (f", {self.held} held" if self.held else "")
            + (f", {sum(self.shared.values())} waited" if self.shared else ""),
        ]
        if self.shared:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.shared.items()))
            lines.append(
                f"  waited: {kinds}: held or answered 429/503 for capacity the platform shares "
                "(a site's budget across all tenants, the proxy's held pool). Not violations: "
                "retry after Retry-After, as your crawler would in production."
            )
        if self.held:
            lines.append(
                f"  held: {self.held} request(s) came before the site's Crawl-delay allowed and "
                "were held until their slot (not violations, but your crawler is faster than "
                "the site asks: slow it down)."
            )
        if not total:
            lines.append("  no violations: your crawler was polite.")
            return "\n".join(lines)
        lines.append("violations by kind:")
        for kind, tally in sorted(self.violations.items(), key=lambda kv: (-kv[1].count, kv[0])):
            lines.append(f"  {kind}: {tally.count} {tally.action}")
            advice = ADVICE.get(Kind(kind), "")
            if advice:
                lines.append(f"    fix: {advice}")
            lines.append(f"    first: {tally.example}")
        if self.mode == "monitor":
            lines.append("monitor mode: these were forwarded; `--mode enforce` refuses them.")
        lines.append(
            "Every decision and how to react to it: docs/decisions.md. Check a URL offline: "
            "crawlguard explain URL --user-agent UA"
        )
        return "\n".join(lines)


class DevAddon:
    """Prints the banner once the proxy is ready, and hints for failed TLS handshakes."""

    def __init__(self, reporter: Reporter, cfg: Config, guard_addon: Any, admin_token: str) -> None:
        self.reporter = reporter
        self.cfg = cfg
        self.guard_addon = guard_addon
        self.admin_token = admin_token

    def running(self) -> None:
        from crawlguard.proxy.ca import cert_file
        from crawlguard.proxy.master import listen_addrs

        addrs = listen_addrs()
        host, port = (addrs[0][0], addrs[0][1]) if addrs else (self.cfg.proxy.listen_host, "?")
        url = f"http://{url_host(host)}:{port}"
        admin = self.guard_addon.admin
        admin_port = admin.port if admin is not None else self.cfg.admin.port
        tenant = self.cfg.tenants[0]
        token = tenant.product_tokens[0]
        ca = cert_file(self.cfg.proxy.confdir)
        out = self.reporter
        out.write(
            f"crawlguard dev: proxy {url}, tenant {TENANT!r}, product token(s) "
            f"{', '.join(tenant.product_tokens)}, mode {tenant.mode}, pacing {tenant.pacing}"
        )
        out.write(f"  HTTPS: your crawler must trust {ca}")
        out.write(
            f"  user agent: your product token, a version and a contact, e.g. "
            f"'{token}/1.0 (+https://example.com/bot)'; no proxy credentials needed"
        )
        store = self.cfg.store.url.removeprefix("sqlite:///")
        out.write(
            f"  admin: http://{url_host(self.cfg.admin.listen_host)}:{admin_port}/ "
            f"(operator token {self.admin_token}); records: {store}"
        )
        out.write("  Ctrl-C stops it and prints a summary of the violations.")

    def tls_failed_client(self, data: Any) -> None:
        from crawlguard.proxy.master import format_address

        where = format_address(data.context.server.address)
        ca = Path(self.cfg.proxy.confdir) / "mitmproxy-ca-cert.pem"
        self.reporter.note(
            f"CONNECT {where}: the client did not accept crawlguard's certificate "
            f"({data.conn.error}); make it trust {ca} (crawlguard ca --export PATH)"
        )

    def tls_failed_server(self, data: Any) -> None:
        from crawlguard.proxy.master import format_address

        where = format_address(data.conn.address)
        self.reporter.note(
            f"{where}: crawlguard did not accept the site's certificate ({data.conn.error}); "
            "a local test site with its own CA: start crawlguard dev with --upstream-ca FILE"
        )


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the command --------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from crawlguard.cli.run import bind_problem, serve, setup_logging

    admin_token = secrets.token_urlsafe(12)
    try:
        cfg = dev_config(args, admin_token)
    except ConfigError as exc:
        print(f"crawlguard: {exc}", file=sys.stderr)
        return 2
    for what, host, port, flag in (
        ("proxy", cfg.proxy.listen_host, cfg.proxy.listen_port, "--port"),
        ("admin", cfg.admin.listen_host, cfg.admin.port, "--admin-port"),
    ):
        if (problem := bind_problem(host, port)) is not None:
            print(
                f"crawlguard: cannot listen on {host}:{port} for the {what} server "
                f"({problem}); choose another with {flag} (0: any free port)",
                file=sys.stderr,
            )
            return 2
    setup_logging()
    # The decision lines replace the JSON lines on stdout; the store keeps every record.
    vlog = logging.getLogger("crawlguard.violations")
    vlog.handlers[:] = [logging.NullHandler()]
    reporter = Reporter(sys.stdout, colour=use_colour(sys.stdout), mode=args.mode)

    def setup(master: Any, guard: Any) -> None:
        guard.open_tenant = TENANT

        def robots_detail(info: RequestInfo) -> str | None:
            entry = guard.robots.peek(info.robots_origin)
            return entry.detail if entry is not None else None

        reporter.robots_detail = robots_detail
        addon = master.addons.get("crawlguardaddon")
        addon.on_decision = reporter
        master.addons.add(DevAddon(reporter, cfg, addon, admin_token))

    try:
        code = asyncio.run(serve(cfg, setup=setup, pid_file=False))
    except ConfigError as exc:
        print(f"crawlguard: {exc}", file=sys.stderr)
        return 2
    reporter.write(reporter.summary())
    return code


__all__ = ["Reporter", "cmd_dev", "dev_config", "register"]
