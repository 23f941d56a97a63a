"""The decision table: a fixed corpus of requests decided by the addon in-process, one JSON line
per request (what was asked, what was decided, what would be forwarded).

It pins the order of checks across the redesign (issue 19): the table in
`tests/data/decisions_golden.jsonl` was written by the decision path before
`crawlguard.policy.pipeline` existed (run against that tree with ``PYTHONPATH=<old tree>``),
and `test_golden_decisions.py` checks that today's pipeline writes the same table. Only the
addon's hook API is used (`http_connect`, `requestheaders`, `flow.response`, `flow.request`),
which both trees share.

Corpus: every case of Google's robots.txt conformance suite (as a request of a tenant whose
registered token is the case's agent), the attack cases of the integrity tests (path and host
spellings, header hygiene, tunnels, modes, robots.txt by method, user-agent tricks), and a
generated corpus (seeded, so the same every run).

    python tests/golden/decisions.py OUT.jsonl
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CONFORMANCE = TESTS / "data" / "conformance" / "google_robotstxt_cases.json"
AGENTS = {"foobot": "FooBot", "barbot": "BarBot", "foo": "Foo", "bazbot": "BazBot",
          "quxbot": "QuxBot"}  # fmt: skip
CONTACT = "(+https://crawler.example/bot)"


@dataclass
class Case:
    """One request of the corpus. `tunnel`: sent inside a CONNECT to `host:port` first."""

    config: str  # "open" (allow_private) or "closed" (production destinations)
    tenant: str
    method: str
    host: str
    port: int
    path: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    scheme: str = "http"
    tunnel: bool = False
    robots: str | None = None  # robots.txt seeded for the origin (None: the site default)


SITE_ROBOTS = (
    "User-agent: *\nDisallow: /private\nDisallow: /*.pdf$\nCrawl-delay: 60\n\n"
    "User-agent: AcmeBot\nDisallow: /acme-only\n"
)


def tenants() -> list[dict[str, Any]]:
    def t(tid: str, tokens: list[str], **extra: Any) -> dict[str, Any]:
        import hashlib

        digest = hashlib.sha256(f"{tid}-secret".encode()).hexdigest()
        return {"id": tid, "token_sha256": digest, "product_tokens": tokens, **extra}

    return [
        t("acme", ["AcmeBot"]),
        t("globex", ["GlobexCrawler"], mode="monitor"),
        t("initech", ["InitechBot"], mode="off"),
        t("slow", ["SlowBot"], pacing="delay"),
        t("fenced", ["FencedBot"], allow_hosts=["*.allowed.test"], deny_hosts=["bad.allowed.test"]),
        t("rate", ["RateBot"], max_rps=0.01),  # no refill while the table runs, however slow
        *(t(f"t-{key}", [token]) for key, token in AGENTS.items()),
    ]


def config(tmp: Path, name: str) -> dict[str, Any]:
    hosts = {f"c{i}.test": ["127.0.0.1"] for i in range(len(conformance()))}
    hosts.update({n: ["127.0.0.1"] for n in ("site.test", "other.test", "a.allowed.test",
                                            "bad.allowed.test", "elsewhere.test")})  # fmt: skip
    hosts.update({"metadata.test": ["169.254.169.254"], "mixed.test": ["127.0.0.1", "10.1.2.3"]})
    return {
        "proxy": {"confdir": str(tmp / "ca")},
        "admin": {"port": 0},
        "store": {"url": f"sqlite:///{tmp / name / 'golden.db'}", "fold_after": 100_000},
        "state": {"url": "memory://"},
        "destinations": {
            "allow_private": name == "open",
            "allowed_ports": [80, 443, "8000-8999"],
            "hosts": hosts,
        },
        "pacing": {"default_min_interval": 0, "max_hold": 30, "scope": "origin"},
        # each tenant paced alone, as the table was written (the site budget: its own tests)
        "platform": {
            "crawl_delay": "per-tenant",
            "site_budget": {"max_rps": None, "max_concurrency": None},
        },
        "tenants": tenants(),
    }


def conformance() -> list[dict[str, Any]]:
    return [c for c in json.loads(CONFORMANCE.read_text()) if c["agent"].lower() in AGENTS]


def ua(tenant: str) -> str:
    token = next(t["product_tokens"][0] for t in tenants() if t["id"] == tenant)
    return f"{token}/1.0 {CONTACT}"


def conformance_cases() -> Iterator[Case]:
    for i, c in enumerate(conformance()):
        url = c["url"] or "/"
        path = url if url.startswith("/") else "/" + url.split("://", 1)[-1].partition("/")[2]
        agent = c["agent"].split()[0]
        tenant = f"t-{agent.lower()}"
        headers = [("User-Agent", f"{agent}/1.0 {CONTACT}")]
        yield Case("open", tenant, "GET", f"c{i}.test", 80, path, headers, robots=c["robots"])


PATHS = ["/", "/page", "/private", "/%70rivate/", "/a/../private/x", "//private",
         "/x/%2e%2e/private", "/docs/a.pdf", "/docs/a.p%64f", "/acme-only/x", "/robots.txt",
         "/robots.txt?x=1", "/%E2%82%AC", "/q?a=%7e&b=%2F", "/a/./b/../c"]  # fmt: skip
HOSTS = [("site.test", 80), ("SITE.test.", 80), ("127.0.0.1", 8000), ("0x7f000001", 8000),
         ("2130706433", 8000), ("127.1", 8000), ("metadata.test", 80), ("mixed.test", 80),
         ("site.test", 22), ("a.allowed.test", 80), ("bad.allowed.test", 80),
         ("1.2.3.4.5", 80), ("elsewhere.test", 8080)]  # fmt: skip
USER_AGENTS = [
    None, "", "python-requests/2.31", "curl/8.0", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120",
    "Googlebot/2.1 (+http://www.google.com/bot.html)", "{tok}", "{tok}/1.0", "{tok}/1.0 " + CONTACT,
    "{tok}/1.0 (+https://x.example/Googlebot/2.1)", "\u212a{tok}/1.0 " + CONTACT,
    "GlobexCrawler/1.0 " + CONTACT, "Scrapy/2.11 (+https://scrapy.org) {tok}/1.0 " + CONTACT,
]  # fmt: skip
EXTRA = [[], [("Connection", "Keep-Alive, X-Trace"), ("X-Trace", "1")],
         [("Connection", "Content-Length")], [("Connection", "Host")], [("X-Note", "a\x01b")],
         [("User-Agent", "python-requests/2.31")], [("Host", "evil.example")],
         [("X-Crawlguard-Decision", "allowed"), ("Via", "1.1 x")]]  # fmt: skip


def attack_cases() -> Iterator[Case]:
    for config_name in ("open", "closed"):
        for tenant in ("acme", "globex", "initech"):
            for host, port in HOSTS:
                yield Case(
                    config_name, tenant, "GET", host, port, "/page", [("User-Agent", ua(tenant))]
                )
            for path in PATHS:
                yield Case(
                    config_name, tenant, "GET", "site.test", 80, path, [("User-Agent", ua(tenant))]
                )
                yield Case(config_name, tenant, "GET", "site.test", 443, path,
                           [("User-Agent", ua(tenant))], scheme="https", tunnel=True)  # fmt: skip
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
        yield Case(
            "open", "acme", method, "other.test", 80, "/robots.txt", [("User-Agent", ua("acme"))]
        )
    for extra in EXTRA:
        yield Case(
            "open", "acme", "GET", "site.test", 80, "/page", [("User-Agent", ua("acme")), *extra]
        )
    for agent in USER_AGENTS:
        headers = [] if agent is None else [("User-Agent", agent.format(tok="AcmeBot"))]
        yield Case("open", "acme", "GET", "site.test", 80, "/page", headers)
    for i in range(3):  # pacing: 60 s Crawl-delay, reject and delay tenants, rate limit
        for tenant in ("acme", "slow", "rate"):
            yield Case(
                "open", tenant, "GET", "other.test", 80, f"/p{i}", [("User-Agent", ua(tenant))]
            )
    for host in ("a.allowed.test", "bad.allowed.test", "site.test"):
        yield Case("open", "fenced", "GET", host, 80, "/", [("User-Agent", ua("fenced"))])


def generated_cases(n: int = 400, seed: int = 19) -> Iterator[Case]:
    rnd = random.Random(seed)
    names = [t["id"] for t in tenants() if not t["id"].startswith("t-")]
    for _ in range(n):
        tenant = rnd.choice(names)
        host, port = rnd.choice(HOSTS)
        agent = rnd.choice(USER_AGENTS)
        headers = (
            [] if agent is None else [("User-Agent", agent.format(tok=ua(tenant).split("/")[0]))]
        )
        headers += rnd.choice(EXTRA)
        tunnel = rnd.random() < 0.3
        yield Case(
            rnd.choice(("open", "closed")), tenant, rnd.choice(("GET", "GET", "HEAD", "POST")),
            host, 443 if tunnel else port, rnd.choice(PATHS), headers,
            scheme="https" if tunnel else "http", tunnel=tunnel,
        )  # fmt: skip


def corpus() -> list[Case]:
    return [*conformance_cases(), *attack_cases(), *generated_cases()]


async def decide_all(cases: list[Case], tmp: Path) -> list[dict[str, Any]]:
    from mitmproxy.addons import proxyserver
    from mitmproxy.test import taddons

    from crawlguard.config import parse_config
    from crawlguard.proxy.addon import CrawlGuardAddon, apply_mitmproxy_options
    from crawlguard.runtime import Runtime

    rows: dict[int, dict[str, Any]] = {}
    for name in ("open", "closed"):
        (tmp / name).mkdir()
        cfg = parse_config(config(tmp, name))
        # one addon per mitmproxy context: the two configs run one after the other
        with taddons.context(proxyserver.Proxyserver()) as tctx:
            guard = Runtime(cfg)
            addon = CrawlGuardAddon(guard)
            apply_mitmproxy_options(tctx.options, cfg, listen=False)
            tctx.master.addons.add(addon)
            guard.start()
            try:
                for i, case in enumerate(cases):
                    if case.config == name:
                        rows[i] = await decide_one(case, guard, addon)
            finally:
                await guard.close()
    return [rows[i] for i in sorted(rows)]


async def decide_one(case: Case, guard: Any, addon: Any) -> dict[str, Any]:
    from mitmproxy import http
    from mitmproxy.test import tflow, tutils

    from crawlguard.policy.robots import RobotsRules
    from crawlguard.robots.cache import RobotsEntry

    cache = guard.robots
    robots = (case.robots if case.robots is not None else SITE_ROBOTS).encode()
    origin = (case.scheme, case.host.lower().rstrip("."), case.port)
    if cache.peek(origin) is None:
        rules = RobotsRules.parse(robots)
        now = cache._clock()
        slot = cache._slot(origin)
        slot.entry = RobotsEntry(rules, True, rules.sha256, rules.body, "ok", now, now + 3600.0)
        slot.good, slot.good_at = rules, now
    auth = base64.b64encode(f"{case.tenant}:{case.tenant}-secret".encode()).decode()
    fields = [("Proxy-Authorization", f"Basic {auth}"), *case.headers]
    client = tflow.tclient_conn()
    row: dict[str, Any] = asdict(case)
    row.pop("robots")
    if case.tunnel:
        connect = tutils.treq(
            host=case.host, port=case.port, path=b"", method=b"CONNECT",
            scheme=b"http", authority=f"{case.host}:{case.port}".encode(),
            headers=http.Headers([(b"Proxy-Authorization", f"Basic {auth}".encode())]),
            content=b"",
        )  # fmt: skip
        cflow = tflow.tflow(client_conn=client, req=connect)
        await addon.http_connect(cflow)
        if cflow.response is not None:
            row["connect"] = [cflow.response.status_code,
                              cflow.response.headers.get("X-Crawlguard-Decision")]  # fmt: skip
            return row
        fields = fields[1:]
    req = tutils.treq(
        host=case.host, port=case.port, path=case.path.encode("utf-8", "surrogateescape"),
        method=case.method.encode(), scheme=case.scheme.encode(),
        authority=b"" if case.tunnel else f"{case.host}:{case.port}".encode(),
        headers=http.Headers(
            [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in fields]
        ),
        content=b"",
    )  # fmt: skip
    flow = tflow.tflow(client_conn=client, req=req)
    await addon.requestheaders(flow)
    if flow.response is not None:
        row["status"] = flow.response.status_code
        row["decision"] = flow.response.headers.get("X-Crawlguard-Decision")
        row["retry_after"] = "Retry-After" in flow.response.headers
        row["body"] = flow.response.get_text().split("\n")[:3]
    else:
        meta = flow.metadata.get("crawlguard")
        decision = meta[1] if meta else None
        row["status"] = None
        row["decision"] = decision.kind.value if decision else None
        row["rule"] = decision.rule if decision else None
        row["forwarded"] = [flow.request.method, flow.request.path,
                            flow.request.headers.get("Host"), flow.request.host,
                            flow.request.port]  # fmt: skip
        addon.error(flow)  # gives back any concurrency slot
    return row


def main(path: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(decide_all(corpus(), Path(tmp)))
    Path(path).write_text(
        "".join(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in rows)
    )
    print(f"{len(rows)} decisions -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
