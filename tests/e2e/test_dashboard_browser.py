"""The operator dashboard (`/`) in a real browser: Debian's Chromium driven by Playwright, against
the real proxy (a subprocess) with a store seeded before it starts plus real violations made
through it. Nothing leaves 127.0.0.1; the page must run under the admin CSP with no console
errors, show the seeded counts, filter, page with the cursor and fit a phone screen."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from harness import GOOD_UA, LocalOrigin, Proxy, base_config
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from crawlguard.policy.records import ViolationRecord
from crawlguard.store import SQLiteStore

OPERATOR_TOKEN = "op"  # base_config's admin.token_sha256 is sha256("op")
GLOBEX_UA = "GlobexCrawler/2.0 (+https://globex.example/bot)"
ROBOTS = b"User-agent: *\nDisallow: /private/\nCrawl-delay: 2\n"
ROBOTS_SHA = hashlib.sha256(ROBOTS).hexdigest()
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
HOSTILE_URL = "https://shop.example.com/private/<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.timeout(90)
GROUP = 12  # identical acme rows in a row


@cache
def chromium_executable() -> str:
    """Debian's chromium, never Playwright's download; installed once with apt-get if we can."""

    def find() -> str | None:
        found = shutil.which("chromium")
        if found:
            return found
        return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None

    path = find()
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
            subprocess.run(cmd, env=env, capture_output=True, timeout=900)
        path = find()
    if path is None:
        pytest.fail(
            "the dashboard browser test needs Debian's Chromium at /usr/bin/chromium or on PATH: "
            "`apt-get install -y chromium` (or `make test` as root). Playwright's own browser "
            "download is deliberately not used."
        )
    return path


# -- the seeded store -----------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rec(
    now: datetime,
    ago: timedelta,
    tenant: str,
    kind: str,
    host: str,
    *,
    action: str = "blocked",
    path: str = "/private/page",
    url: str | None = None,
    **extra: Any,
) -> ViolationRecord:
    return ViolationRecord(
        ts=iso(now - ago),
        tenant=tenant,
        kind=kind,
        action=action,
        method="GET",
        url=url or f"https://{host}{path}",
        **extra,
    )


@dataclass
class Seeded:
    day: Counter[str]  # tenant -> violations in the last 24 h (held excluded)
    week: Counter[str]  # ... in the last 7 days
    day_kinds: Counter[str]  # kind -> violations in the last 24 h
    day_hosts: Counter[tuple[str, str]]  # (tenant, host) -> violations in the last 24 h


def seed(db: Path, now: datetime) -> list[ViolationRecord]:
    """Violations for three tenants across kinds, hosts and hours, written before the proxy
    starts. Everything 'today' sits between 20 min and 21 h ago: inside the dashboard's 24 h
    window whatever the clock."""
    h = lambda n, m=20: timedelta(hours=n, minutes=m)  # noqa: E731
    # as the proxy records them: the robots.txt's Crawl-delay rides along (the DELAY column
    # must not show it on a robots-disallow row: it decided nothing there)
    robots = {"rule": "Disallow: /private/", "robots_sha256": ROBOTS_SHA, "crawl_delay": 2.0}
    pace = {"crawl_delay": 2.0, "retry_after": 2, "robots_sha256": ROBOTS_SHA}
    held = {**pace, "delay_seconds": 1.5}
    records = [
        # acme (enforce): 6 in the last day
        rec(now, h(0), "acme", "robots-disallow", "shop.example.com", url=HOSTILE_URL, **robots),
        rec(now, h(2), "acme", "robots-disallow", "shop.example.com", **robots),
        rec(now, h(5), "acme", "robots-disallow", "shop.example.com", **robots),
        rec(now, h(9), "acme", "ua-generic", "news.example.org", user_agent="python-requests/2"),
        rec(now, h(13), "acme", "crawl-delay", "docs.example.net", **pace),
        rec(now, h(17), "acme", "crawl-delay", "docs.example.net", **pace),
        # held by delay pacing: not a violation, so in no count below
        rec(now, h(3), "acme", "crawl-delay", "docs.example.net", action="delayed", **held),
        # a crawler hammering one URL: one run of identical rows, grouped on the page
        *[
            rec(
                now,
                timedelta(hours=14, minutes=m),
                "acme",
                "ua-generic",
                "feed.example.com",
                path="/feed.xml",
                user_agent="curl/8.5",
            )
            for m in range(GROUP)
        ],
        # globex (monitor): 5 logged
        rec(now, h(1), "globex", "ua-missing", "blog.example.io", action="logged"),
        rec(now, h(4), "globex", "ua-missing", "blog.example.io", action="logged"),
        rec(now, h(8), "globex", "ua-missing", "api.example.net", action="logged"),
        rec(now, h(11), "globex", "robots-disallow", "blog.example.io", action="logged", **robots),
        rec(now, h(20), "globex", "robots-disallow", "blog.example.io", action="logged", **robots),
        # initech: 3
        rec(now, h(6), "initech", "origin-backoff", "api.example.net", retry_after=30),
        rec(now, h(7), "initech", "origin-backoff", "api.example.net", retry_after=30),
        rec(now, h(21), "initech", "origin-backoff", "api.example.net", retry_after=30),
        # older: in the 7 d range only
        rec(now, timedelta(days=3), "acme", "ua-generic", "news.example.org"),
        rec(now, timedelta(days=3, hours=2), "acme", "ua-generic", "news.example.org"),
        *[
            rec(now, timedelta(days=4, minutes=i), "initech", "tenant-limit", "api.example.net")
            for i in range(60)
        ],
        # older still: 30 d only
        *[
            rec(now, timedelta(days=20, hours=i), "globex", "ua-missing", "blog.example.io")
            for i in range(4)
        ],
    ]
    store = SQLiteStore(str(db))
    try:
        store.record_many([(r, ROBOTS if r.robots_sha256 else None) for r in records])
        # requests counted an hour ago (the proxy's own counts of the real requests add to it)
        store.add_request_counts({("acme", "allowed"): 400, ("globex", "allowed"): 300},
                                 iso(now - timedelta(hours=1)))  # fmt: skip
    finally:
        store.close()
    return records


def expected(records: list[ViolationRecord], now: datetime) -> Seeded:
    out = Seeded(Counter(), Counter(), Counter(), Counter())
    for r in records:
        if r.action == "delayed":
            continue
        age = now - datetime.fromisoformat(r.ts)
        host = urlsplit(r.url).hostname or ""
        if age < timedelta(days=6):
            out.week[r.tenant] += 1
        if age < timedelta(hours=22):
            out.day[r.tenant] += 1
            out.day_kinds[r.kind] += 1
            out.day_hosts[(r.tenant, host)] += 1
    return out


# -- fixtures -------------------------------------------------------------------------------


@dataclass
class Env:
    proxy: Proxy
    base: str
    records: list[ViolationRecord]
    seeded: Seeded


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("dashboard")
    now = datetime.now(UTC)
    records = seed(tmp / "var" / "crawlguard.db", now)
    origin = LocalOrigin(robots=ROBOTS)
    proxy = Proxy(base_config(tmp), tmp)
    try:
        # real violations through the proxy: acme is refused, globex (monitor) is logged
        acme = proxy.get(origin.url("/private/real-acme"), tenant="acme", ua=GOOD_UA)
        assert acme.status_code == 403, acme.text
        globex = proxy.get(origin.url("/private/real-globex"), tenant="globex", ua=GLOBEX_UA)
        assert globex.status_code == 200, globex.text
        real = [ViolationRecord.from_dict(v) for v in proxy.violations("--since", "1h")]
        real = [r for r in real if "/private/real-" in r.url]
        assert sorted(r.tenant for r in real) == ["acme", "globex"], real
        all_records = records + real
        yield Env(
            proxy, f"http://127.0.0.1:{proxy.admin_port}", all_records, expected(all_records, now)
        )
    finally:
        proxy.stop()
        origin.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


@dataclass
class Watch:
    """What the page did: requests it made, console errors, uncaught exceptions."""

    urls: list[str]
    errors: list[str]

    def check(self) -> None:
        assert not self.errors, self.errors
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme in ("data", "about", "blob"):
                continue
            assert parts.scheme in ("http", "https"), url
            assert parts.hostname == "127.0.0.1", f"the page left 127.0.0.1: {url}"


def watch(page: Page) -> Watch:
    w = Watch([], [])
    page.on("request", lambda r: w.urls.append(r.url))

    def console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            w.errors.append(f"console: {msg.text}")

    page.on("console", console)
    page.on("pageerror", lambda exc: w.errors.append(f"pageerror: {exc}"))
    return w


def login(page: Page, base: str) -> None:
    """Through the form, as an operator would: `/` sends a browser without a session there."""
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("#token", OPERATOR_TOKEN)
    page.click("main.login button[type=submit]")
    expect(page).to_have_url(base + "/")
    loaded(page)


def loaded(page: Page) -> None:
    """The page finished its latest refresh."""
    expect(page.locator("#main")).to_have_attribute("aria-busy", "false")


def rows(page: Page) -> Any:
    return page.locator("#violations-table tbody tr[data-id]")


def row_tenants(page: Page) -> Counter[str]:
    return Counter(rows(page).evaluate_all("rs => rs.map(r => r.dataset.tenant)"))


def segment_totals(page: Page) -> Counter[str]:
    pairs = page.locator("#chart .seg").evaluate_all(
        "ss => ss.map(s => [s.dataset.tenant, Number(s.dataset.count)])"
    )
    totals: Counter[str] = Counter()
    for tenant, count in pairs:
        totals[tenant] += count
    return totals


def query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


# -- tests ----------------------------------------------------------------------------------


def test_dashboard_laptop(env: Env, browser: Browser, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    w = watch(page)
    login(page, env.base)
    served = context.request.get(env.base + "/")  # the page runs under the admin CSP
    assert served.headers["content-security-policy"] == CSP, served.headers
    day = env.seeded.day
    assert set(day) == {"acme", "globex", "initech"}

    # the chart: one legend entry and one colour per tenant, counts as seeded
    for tenant, count in day.items():
        item = page.locator(f'#legend button[data-tenant="{tenant}"]')
        expect(item.locator(".count")).to_have_text(str(count))
    assert segment_totals(page) == day
    expect(page.locator("#kpi-violations")).to_have_text(str(sum(day.values())))
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("role", "img")
    label = ".*".join(f"{t} {n}" for t, n in sorted(day.items()))
    expect(chart).to_have_attribute("aria-label", re.compile(label))
    colours = page.locator("#legend .swatch").evaluate_all(
        "ss => ss.map(s => getComputedStyle(s).backgroundColor)"
    )
    assert len(set(colours)) == len(colours) == 3, colours

    # by kind, top hosts, tenants
    for kind, count in env.seeded.day_kinds.items():
        expect(page.locator(f'#kinds [data-kind="{kind}"] .bar-count')).to_have_text(str(count))
    for tenant in day:
        hosts = sorted((-n, h) for (t, h), n in env.seeded.day_hosts.items() if t == tenant)
        shown = page.locator(f'#hosts .host-group[data-tenant="{tenant}"] li')
        expect(shown.locator(".bar-label")).to_have_text([h for _, h in hosts])
        expect(shown.locator(".bar-count")).to_have_text([str(-n) for n, _ in hosts])
    expect(page.locator('#tenants tr[data-tenant="globex"] .badge')).to_have_text("monitor")
    expect(page.locator('#tenants tr[data-tenant="acme"] .badge')).to_have_text("enforce")
    # tenancy.source: file: no lifecycle actions (tenants are edited in the config file)
    expect(page.locator("#tenants .actions-col")).to_be_hidden()
    expect(page.locator("#tenants td.actions")).to_have_count(0)
    expect(page.locator("#kpi-held")).to_have_text("1")
    # busy sites (issue 22), from the real API: a row per site, or one saying there is none
    expect(page.locator("#sites-table tbody tr").first).to_be_visible()

    # the table: every violation of the day, newest first, held ones left out
    expect(rows(page)).to_have_count(sum(day.values()))
    assert row_tenants(page) == day
    assert page.locator('#violations-table tr[data-action="delayed"]').count() == 0
    newest = rows(page).first
    expect(newest).to_contain_text("/private/real-")  # the real requests are the newest
    # data is text, never markup
    hostile = page.locator("#violations-table .url", has_text="<img src=x onerror=alert(1)>")
    expect(hostile).to_have_count(1)
    assert page.locator("#violations-table img").count() == 0
    # the deciding rule links the robots.txt evidence, which is the stored body
    link = page.locator('#violations-table a.evidence[href="/api/evidence/' + ROBOTS_SHA + '"]')
    expect(link.first).to_be_visible()
    evidence = context.request.get(env.base + link.first.get_attribute("href"))
    assert evidence.status == 200 and evidence.body() == ROBOTS

    # issue 21: a run of identical rows is one row with a "xN" button that shows the others
    toggle = page.locator("#violations-table .group-toggle", has_text=f"\u00d7{GROUP}")
    expect(toggle).to_have_count(1)
    run = page.locator('#violations-table tr[data-id][data-kind="ua-generic"]',
                       has_text="feed.example.com/feed.xml")  # fmt: skip
    expect(run).to_have_count(GROUP)
    assert run.evaluate_all("rs => rs.filter(r => r.checkVisibility()).length") == 1
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    assert run.evaluate_all("rs => rs.filter(r => r.checkVisibility()).length") == GROUP
    toggle.click()
    assert run.evaluate_all("rs => rs.filter(r => r.checkVisibility()).length") == 1
    # DELAY: the Crawl-delay only where it decided (crawl-delay rows), not on robots-disallow
    disallow = page.locator('#violations-table tr[data-kind="robots-disallow"] td.delay')
    assert disallow.count() >= 3
    assert not any("crawl-delay" in t for t in disallow.all_inner_texts())
    paced = page.locator('#violations-table tr[data-kind="crawl-delay"] td.delay')
    expect(paced.first).to_contain_text("crawl-delay 2 s")

    page.screenshot(path=str(tmp_path / "dashboard-laptop.png"), full_page=True)

    # filter by clicking a tenant: only its rows and its series remain, and the URL says so
    page.locator('#legend button[data-tenant="globex"]').click()
    expect(page).to_have_url(re.compile(r"[?&]tenant=globex"))
    loaded(page)
    expect(rows(page)).to_have_count(day["globex"])
    assert set(row_tenants(page)) == {"globex"}
    expect(page.locator("#legend button")).to_have_count(1)
    assert set(segment_totals(page)) == {"globex"}
    expect(page.locator("#f-tenant")).to_have_value("globex")
    expect(page.locator("#tenants tbody tr")).to_have_count(1)

    # a wider range through the URL-backed controls; a reload keeps the view (shareable)
    page.locator('label[for="r-7d"]').click()
    expect(page).to_have_url(re.compile(r"[?&]range=7d"))
    loaded(page)
    expect(page.locator('#legend button[data-tenant="globex"] .count')).to_have_text(
        str(env.seeded.week["globex"])
    )
    page.reload()
    loaded(page)
    assert query(page) == {"tenant": ["globex"], "range": ["7d"]}
    expect(page.locator("#f-tenant")).to_have_value("globex")
    expect(page.locator("#r-7d")).to_be_checked()
    expect(rows(page)).to_have_count(env.seeded.week["globex"])

    # another tenant through the select; "load more" follows the cursor to the end
    page.select_option("#f-tenant", "initech")
    expect(page).to_have_url(re.compile(r"[?&]tenant=initech"))
    loaded(page)
    week_initech = env.seeded.week["initech"]
    assert week_initech > 50  # more than one page
    expect(rows(page)).to_have_count(50)
    page.click("#load-more")
    expect(rows(page)).to_have_count(week_initech)
    expect(page.locator("#load-more")).to_be_hidden()
    ids = rows(page).evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert len(set(ids)) == len(ids)

    # a kind filter: the requests card's share counts that kind only
    page.goto(env.base + "/?kind=robots-disallow")
    loaded(page)
    shown = int(page.locator("#kpi-requests").inner_text().replace(",", ""))
    assert shown > 0
    n = env.seeded.day_kinds["robots-disallow"]
    share = f"{100 * n / shown:.{2 if n * 1000 < shown else 1}f}"
    expect(page.locator("#kpi-requests-note")).to_have_text(
        f"{share}% were robots-disallow violations"
    )
    expect(page.locator("#kind-warning")).to_be_hidden()

    # an unknown kind in the address: every kind is shown, and the page says so
    page.goto(env.base + "/?kind=robots_disallow")
    loaded(page)
    warning = page.locator("#kind-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text('Unknown kind "robots_disallow"')
    expect(warning).to_contain_text("Did you mean robots-disallow?")
    expect(rows(page)).to_have_count(sum(day.values()))

    # a kind with nothing in range: the empty states
    page.goto(env.base + "/?kind=store-backlogged&range=1h")
    loaded(page)
    expect(page.locator("#chart")).to_contain_text("No violations in this range")
    expect(page.locator("#violations-table")).to_contain_text("No violations in this range")
    expect(page.locator("#kinds")).to_contain_text("No violations in this range")

    w.check()
    context.close()


def test_dashboard_phone(env: Env, browser: Browser, tmp_path: Path) -> None:
    context = browser.new_context(
        viewport={"width": 375, "height": 800}, device_scale_factor=2, is_mobile=True
    )
    page = context.new_page()
    w = watch(page)
    login(page, env.base)
    page.goto(env.base + "/?range=7d")
    loaded(page)
    # the first page: the 50 newest records of the week, less the held ones the page hides
    week = sorted(
        (r for r in env.records if now_utc() - datetime.fromisoformat(r.ts) < timedelta(days=6)),
        key=lambda r: r.ts,
        reverse=True,
    )[:50]
    expect(rows(page)).to_have_count(sum(r.action != "delayed" for r in week))
    expect(page.locator("#load-more")).to_be_visible()
    expect(page.locator("#legend button")).to_have_count(3)
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375 + 1, f"the page scrolls sideways on a phone: {width}px wide"
    # issue 21: the refused URL is on screen (wrapped), not in a table scrolled sideways
    wrap = page.locator("#violations .table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    url = page.locator("#violations-table tr[data-id] .url").first
    url.scroll_into_view_if_needed()
    box = url.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, box
    # ... and all of it a tap away
    url.click()
    expect(url).to_have_attribute("aria-expanded", "true")
    page.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
    w.check()
    context.close()


def test_dashboard_chart_of_fresh_data_has_several_bars(browser: Browser, tmp_path: Path) -> None:
    """Issue 21: a proxy started minutes ago has all its violations in the newest hour; the
    24 h chart then asks for finer buckets from its first one instead of drawing one bar."""
    now = now_utc()
    fresh = [rec(now, timedelta(minutes=m), "acme", "ua-generic", "fresh.example.com")
             for m in (2, 12, 22, 32)]  # fmt: skip
    store = SQLiteStore(str(tmp_path / "var" / "crawlguard.db"))
    try:
        store.record_many([(r, None) for r in fresh])
    finally:
        store.close()
    proxy = Proxy(base_config(tmp_path), tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        w = watch(page)
        login(page, f"http://127.0.0.1:{proxy.admin_port}")
        expect(page.locator("#kpi-violations")).to_have_text("4")
        bars = page.locator("#chart .seg").evaluate_all(
            "ss => new Set(ss.map(s => s.getAttribute('x'))).size"
        )
        assert bars >= 3, f"{bars} bar(s) for violations 2 to 32 minutes old"
        expect(page.locator("#chart-sub")).not_to_contain_text("per hour")
        w.check()
    finally:
        context.close()
        proxy.stop()


def test_dashboard_needs_login(env: Env, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    w = watch(page)
    # a shared view survives the login: /login?next=<path and query>
    page.goto(env.base + "/?tenant=acme")
    expect(page).to_have_url(re.compile(r"/login\?next=/%3Ftenant%3Dacme$"))
    # a phone renders the login form at its own width (issue 21)
    viewport = page.locator('meta[name="viewport"]')
    expect(viewport).to_have_attribute("content", "width=device-width, initial-scale=1")
    # the static assets are public, the API is not
    assert context.request.get(env.base + "/static/dashboard.js").status == 200
    assert context.request.get(env.base + "/api/summary").status == 401
    for name in ("dashboard.py", "..%2fapi.py", "%2e%2e/api.py", "", "dashboard.html"):
        got = context.request.get(env.base + "/static/" + name, max_redirects=0)
        assert got.status in (303, 404), (name, got.status)  # never a file outside the list
    # a wrong token is refused on the form
    page.fill("#token", "wrong")
    page.click("main.login button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Wrong operator token")
    page.fill("#token", OPERATOR_TOKEN)
    page.click("main.login button[type=submit]")
    expect(page).to_have_url(env.base + "/?tenant=acme")
    loaded(page)
    expect(page.locator("#f-tenant")).to_have_value("acme")
    # the wrong token's 401 is the one console error we expect
    w.errors = [e for e in w.errors if "401" not in e]
    w.check()
    context.close()


# -- busy sites (issue 22) ---------------------------------------------------------------------

HOSTILE_SITE = "<img src=x onerror=alert(1)>.example"
SITES = {
    "window": 60,
    "sort": "busy",
    "sites": [
        {
            "site": "shop.example.com", "rate_rps": 2.0, "budget_rps": 2.0, "interval": 0.5,
            "base_interval": 0.25,
            "backoff": {"rate": 0.5, "paused_for": 3.0, "capped_rps": 1.5},
            "in_flight": 3, "max_concurrency": 4,
            "tenants": [
                {"tenant": "acme", "weight": 2.0, "grants": 80, "share": 0.667, "waiting": False},
                {"tenant": "globex", "weight": 1.0, "grants": 40, "share": 0.333, "waiting": True},
            ]
            + [{"tenant": f"t{i}", "weight": 1.0, "grants": 0, "share": 0.0, "waiting": True}
               for i in range(5)],
            "tenants_total": 9,
        },
        {
            "site": HOSTILE_SITE, "rate_rps": 0.1, "budget_rps": None, "interval": 0.0,
            "base_interval": 0.0, "backoff": {"rate": 1.0, "paused_for": 0.0, "capped_rps": None},
            "in_flight": 0, "max_concurrency": None,
            "tenants": [
                {"tenant": "initech", "weight": 1.0, "grants": 6, "share": 1.0, "waiting": False},
            ],
            "tenants_total": 1,
        },
    ],
}  # fmt: skip


SITES_API = re.compile(r"/api/sites(\?|$)")


def answer(page: Page, status: int, body: dict[str, Any]) -> None:
    """/api/sites answers `body` from now on."""
    page.unroute(SITES_API)
    data = json.dumps(body)
    page.route(
        SITES_API,
        lambda route: route.fulfill(status=status, content_type="application/json", body=data),
    )


def test_dashboard_busy_sites(env: Env, browser: Browser, tmp_path: Path) -> None:
    """The panel renders GET /api/sites (stubbed here: which sites are busy is the proxy's
    business, tested with its site state) as text, and asks for the top 10 by slots."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    w = watch(page)
    asked: list[str] = []

    def stub(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(SITES))

    page.route(SITES_API, stub)
    login(page, env.base)
    assert asked and parse_qs(urlsplit(asked[-1]).query) == {"sort": ["busy"], "limit": ["10"]}
    rows_ = page.locator("#sites-table tbody tr[data-site]")
    expect(rows_).to_have_count(2)
    assert rows_.evaluate_all("rs => rs.map(r => r.dataset.site)") == [
        "shop.example.com", HOSTILE_SITE,
    ]  # fmt: skip
    shop = page.locator('#sites-table tr[data-site="shop.example.com"]')
    expect(shop.locator("td.rate")).to_contain_text("2/s")
    expect(shop.locator("td.rate")).to_contain_text("budget 2/s · every 0.5 s")
    expect(shop.locator("td.backoff .badge")).to_have_text(
        ["rate 50%", "paused 3 s", "RateLimit 1.5/s"]
    )
    expect(shop.locator("td.num")).to_have_text("3 / 4")
    shares = shop.locator("li.share")
    expect(shares).to_have_count(5)  # the first five, then how many more
    expect(shares.first).to_contain_text("acme66.7%")
    expect(shop.locator('li.share[data-tenant="globex"] .wait')).to_have_text("waiting")
    expect(shop.locator(".share-list")).to_contain_text("+4 more")
    hostile = page.locator("#sites-table tr[data-site]").nth(1)
    expect(hostile.locator(".site-name")).to_have_text(HOSTILE_SITE)  # text, never markup
    expect(hostile.locator("td.rate")).to_contain_text("no pace")
    expect(hostile.locator("td.backoff")).to_have_text("none")
    expect(hostile.locator("td.num")).to_have_text("0 / \u221e")
    assert page.locator("#sites-table img").count() == 0
    page.locator("#sites").screenshot(path=str(tmp_path / "dashboard-busy-sites.png"))

    # no busy site: the empty state
    empty: dict[str, Any] = {"window": 60, "sort": "busy", "sites": []}
    answer(page, 200, empty)
    page.click("#refresh-now")
    expect(page.locator("#sites-table")).to_contain_text("No busy sites")
    # an API that fails: said in the panel, the rest of the page still loads
    answer(page, 503, {"error": "state down"})
    page.click("#refresh-now")
    expect(page.locator("#sites-table")).to_contain_text("Site budgets unavailable: ")
    expect(page.locator("#sites-table")).to_contain_text("state down")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#kpi-violations")).to_have_text(str(sum(env.seeded.day.values())))
    w.errors = [e for e in w.errors if "503" not in e]  # the stubbed failure's console line
    w.check()
    context.close()


# -- tenant lifecycle actions (tenancy.source: store) -----------------------------------------

HOOLI_UA = "HooliBot/1.0 (+https://hooli.example/bot)"


@pytest.fixture
def store_proxy(tmp_path: Path) -> Iterator[Proxy]:
    config = base_config(tmp_path, tenancy={"source": "store", "rotate_grace": 3600}, tenants=[])
    proxy = Proxy(config, tmp_path)
    yield proxy
    proxy.stop()


def test_dashboard_rotates_changes_mode_and_disables_tenants(
    store_proxy: Proxy, browser: Browser, tmp_path: Path
) -> None:
    import requests
    from harness import LocalOrigin, wait_for

    base = f"http://127.0.0.1:{store_proxy.admin_port}"
    bearer = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

    def api(method: str, path: str, body: Any = None) -> Any:
        r = requests.request(method, base + path, json=body, headers=bearer, timeout=10)
        assert r.ok, (method, path, r.status_code, r.text)
        return r.json()

    def actions(tenant: str) -> list[str]:
        return [e["action"] for e in api("GET", f"/api/tenants/{tenant}/audit")]

    first = api("POST", "/api/tenants", {"id": "hooli", "product_tokens": ["HooliBot"]})["token"]
    api("POST", "/api/tenants", {"id": "piedpiper", "product_tokens": ["PiedPiperBot"]})

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page = context.new_page()
    w = watch(page)
    login(page, base)
    expect(page.locator("#tenants .actions-col")).to_be_visible()
    hooli = page.locator('#tenants tr[data-tenant="hooli"]')
    expect(hooli.locator(".badge")).to_have_text("enforce")

    # rotate, cancelled: nothing happens
    hooli.locator("button.rotate").click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("1 h")  # the grace, from the server
    page.locator('#confirm button[value="cancel"]').click()
    expect(page.locator("#confirm")).to_be_hidden()
    assert actions("hooli") == ["create"]

    # rotate, confirmed: the new token once, with a copy button and a warning
    hooli.locator("button.rotate").click()
    page.locator("#confirm-ok").click()
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("will not be shown again")
    expect(page.locator("#token-tenant")).to_have_text("hooli")
    token = page.locator("#token-value").input_value()
    assert len(token) >= 32 and token != first
    page.locator("#token-copy").click()
    expect(page.locator("#token-copied")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == token
    dialog.locator("button[type=submit]").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#token-value")).to_have_value("")  # not left in the page
    assert actions("hooli") == ["rotate", "create"]
    audit = api("GET", "/api/audit?tenant=hooli")
    assert audit[0]["actor"] == "api:operator" and token not in json.dumps(audit)
    # change the mode, confirmed
    hooli.locator("select.mode-select").select_option("monitor")
    expect(page.locator("#confirm-title")).to_contain_text("monitor")
    page.locator("#confirm-ok").click()
    assert wait_for(lambda: api("GET", "/api/tenants/hooli")["mode"] == "monitor", 10)
    expect(hooli.locator(".badge")).to_have_text("monitor")
    # and one cancelled: the select goes back, nothing changes
    hooli.locator("select.mode-select").select_option("off")
    page.locator('#confirm button[value="cancel"]').click()
    expect(hooli.locator("select.mode-select")).to_have_value("monitor")
    assert api("GET", "/api/tenants/hooli")["mode"] == "monitor"

    # disable, confirmed: disabled in the API, no more actions in the row
    piedpiper = page.locator('#tenants tr[data-tenant="piedpiper"]')
    piedpiper.locator("button.disable").click()
    expect(page.locator("#confirm-text")).to_contain_text("407")
    page.locator("#confirm-ok").click()
    assert wait_for(lambda: api("GET", "/api/tenants/piedpiper")["disabled"] is True, 10)
    expect(piedpiper.locator(".badge")).to_have_text("disabled")
    expect(piedpiper.locator("button")).to_have_count(1)  # the tenant's name only
    assert actions("piedpiper") == ["disable", "create"]
    assert api("GET", "/api/tenants/hooli")["disabled"] is False

    # the token shown is the tenant's: the proxy takes it
    origin = LocalOrigin()
    try:
        via = {"http": f"http://hooli:{token}@127.0.0.1:{store_proxy.port}"}

        def accepted() -> bool:
            got = requests.get(
                origin.url("/page"), proxies=via, headers={"User-Agent": HOOLI_UA}, timeout=10
            )
            return got.status_code == 200

        assert wait_for(accepted, 15), store_proxy.log()
    finally:
        origin.close()

    page.screenshot(path=str(tmp_path / "dashboard-tenants.png"), full_page=True)
    w.check()
    context.close()
