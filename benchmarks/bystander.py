"""Issues 9 and 18 (item 12) end to end: does a hostile robots.txt slow down *other* tenants?

    .venv/bin/python benchmarks/bystander.py [--phase-seconds 6] [--names-cap 75]
                                             [--queue-seconds 30]

Starts, all on 127.0.0.1:

* a hostile origin (its own process) serving, by Host name, the issue's robots.txt (18,000
  rules like `Disallow: /*abcdefgh*1N0`, over MAX_WILDCARD_RULES: the site is "too complex"
  and fails closed) or a file exactly at the caps (1,000 costly "*" rules: every decision
  does real matching, up to MATCH_BUDGET);
* a healthy origin (its own process) with an ordinary robots.txt;
* the real proxy, `crawlguard run --config` (subprocess), two tenants: `attacker` and
  `bystander`; `destinations.hosts` maps caps.test, h0.test..h99.test, q0.test..q59.test and
  b0.test..b799.test to 127.0.0.1.

Both hostile files are fetched once before the timed phases. Then, phase by phase, attacker
processes send request lines up to the proxy's cap (16 KiB) to the hostile site while the
bystander polls the healthy site every 0.1 s: decisions on a *cached* robots.txt (1 and 3
attackers), and one first request to each of 100 names of the hostile server (100 origins,
so 100 fetches and parses of a 500 KiB file: the uncached case). Last, issue 18's parse
queue: 60 attacker processes each send one first request to their own name of the hostile
server *at once* (60 parses of a 500 KiB file queued together); once the hostile origin has
served those 60 robots.txt, the bystander starts, and its every request goes to a name it never
used (b0.test, b1.test, …: each a first request, so each waits for a fetch and a parse of its
own), for --queue-seconds (default 30: the whole queue drains within it). Printed: the
bystander's latency (p50/p95/p99/max) per phase, with a baseline in the same run, the
attackers' round trips (decision + proxy overhead on loopback) and the verdict they got.
Bounded: each phase runs --phase-seconds (default 6); the host-names phase stops when its
first requests are answered or after --names-cap (default 75 s); about three minutes in all.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import math
import multiprocessing as mp
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import yaml

from crawlguard.policy.robots import (
    MATCH_BUDGET,
    MAX_BYTES,
    MAX_WILDCARD_PATTERN,
    MAX_WILDCARD_RULES,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import free_port, sha256_hex  # the benchmarks' shared helpers

REPO = Path(__file__).resolve().parents[1]
REQUEST_LINE_CAP = 16 * 1024  # proxy.max_request_line default (414 beyond it)
SPELLINGS = 100
AT_ONCE = 60  # issue 18: one tenant's first requests to 60 sites with a 500 KiB robots.txt
NEW_SITES = 800  # bystander names for the parse-queue phase: one per 0.1 s tick, never reused
ATTACK_UA = "AttackBot/1.0 (+https://attacker.example/bot)"
BYSTANDER_UA = "ByBot/1.0 (+https://bystander.example/bot)"
HEALTHY_ROBOTS = b"User-agent: *\nDisallow: /private/\nAllow: /\n"
PLAIN_ROBOTS = b"User-agent: *\nDisallow: /\n"  # the control: same refusals, trivial matching


def issue9_file() -> bytes:
    """The issue's file: 18k `/*abcdefgh*1N0` rules (~525 KB; the proxy parses 500 KiB)."""
    rnd = random.Random(9)
    return b"User-agent: *\n" + b"".join(
        b"Disallow: /*abcdefgh*1%d0\n" % rnd.randrange(10**6) for _ in range(18_000)
    )


def caps_file() -> bytes:
    """Exactly MAX_WILDCARD_RULES costly "*" rules: not too complex, every decision matches."""
    return b"User-agent: *\n" + b"".join(
        b"Disallow: /*%sb%d\n" % (b"a" * 60, i) for i in range(MAX_WILDCARD_RULES)
    )


# -- origins (each in its own process, so serving them costs the measuring process nothing) --


def _serve_origin(
    port_out: Any, hostile: bool, page_hits: Any, robots_hits: Any, ready: EventType
) -> None:
    bodies = {
        "issue": issue9_file(),
        "caps": caps_file(),
        "plain": PLAIN_ROBOTS,
        "healthy": HEALTHY_ROBOTS,
    }
    by_host = {"caps.test": "caps", "plain.test": "plain"}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/robots.txt":
                host = (self.headers.get("Host") or "").split(":")[0]
                kind = by_host.get(host, "issue") if hostile else "healthy"
                body = bodies[kind]
                with robots_hits.get_lock():
                    robots_hits.value += 1
            else:
                with page_hits.get_lock():
                    page_hits.value += 1
                body = b"hello\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the proxy reads 500 KiB of robots.txt at most, then resets: expected

    server = Server(("127.0.0.1", 0), Handler)
    port_out.value = server.server_address[1]
    ready.set()
    server.serve_forever()


@dataclass
class Origin:
    port: int
    page_hits: Any
    robots_hits: Any
    proc: mp.process.BaseProcess


def start_origin(ctx: Any, hostile: bool) -> Origin:
    port, pages, robots = (ctx.Value("i", 0) for _ in range(3))
    ready = ctx.Event()
    proc = ctx.Process(
        target=_serve_origin, args=(port, hostile, pages, robots, ready), daemon=True
    )
    proc.start()
    if not ready.wait(30):
        raise RuntimeError("origin did not start")
    return Origin(int(port.value), pages, robots, proc)


# -- the proxy -------------------------------------------------------------------------------


def proxy_config(tmp: Path, ports: list[int]) -> dict[str, Any]:
    hosts = {f"h{i}.test": ["127.0.0.1"] for i in range(SPELLINGS)}
    hosts.update({f"q{i}.test": ["127.0.0.1"] for i in range(AT_ONCE)})
    hosts.update({f"b{i}.test": ["127.0.0.1"] for i in range(NEW_SITES)})
    hosts["caps.test"] = hosts["plain.test"] = ["127.0.0.1"]
    return {
        "proxy": {"listen_host": "127.0.0.1", "confdir": str(tmp / "ca")},
        "admin": {"listen_host": "127.0.0.1"},
        "store": {"url": f"sqlite:///{tmp / 'var' / 'crawlguard.db'}"},
        "state": {"url": "memory://"},
        "robots": {"user_agent": "crawlguard-bench/1.0 (+https://ops.example)"},
        "destinations": {"allow_private": True, "allowed_ports": ports, "hosts": hosts},
        "pacing": {"default_min_interval": 0},
        # one origin at full speed: the site budget's grant runs on every request (shared
        # mode), uncapped, so the benchmark measures its cost, not its pace
        "platform": {"site_budget": {"max_rps": None, "max_concurrency": None}},
        "tenants": [
            {"id": tid, "token_sha256": sha256_hex(f"{tid}-secret"), "product_tokens": [token]}
            for tid, token in (("attacker", "AttackBot"), ("bystander", "ByBot"))
        ],
    }


class Proxy:
    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.port, self.admin_port = free_port(), free_port()
        path = tmp / "crawlguard.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "proxy.log"
        self._log = self.log_path.open("wb")
        self._out = (tmp / "proxy.out").open("wb")  # violation JSON lines
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crawlguard", "run", "--config", str(path),
             "--listen-port", str(self.port), "--admin-port", str(self.admin_port)],
            cwd=tmp, stdout=self._out, stderr=self._log,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while "crawlguard ready" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"proxy did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._out.close()


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    decision: str
    body: bytes
    seconds: float


class Client:
    """One keep-alive connection to the proxy (reopened when the proxy closes it)."""

    def __init__(self, proxy_port: int, tenant: str, ua: str) -> None:
        self.proxy_port = proxy_port
        creds = base64.b64encode(f"{tenant}:{tenant}-secret".encode()).decode()
        self.auth = f"Basic {creds}"
        self.ua = ua
        self.sock: socket.socket | None = None

    def get(self, url: str, host: str) -> Reply:
        head = (
            f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {self.ua}\r\n"
            f"Proxy-Authorization: {self.auth}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=60)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            try:
                self.sock.sendall(head)
                resp = http.client.HTTPResponse(self.sock)  # type: ignore[arg-type]
                resp.begin()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            seconds = time.perf_counter() - start
            if resp.will_close:
                self.close()
            decision = resp.getheader("X-Crawlguard-Decision") or "allowed"
            return Reply(resp.status, decision, body, seconds)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def long_path(i: int, budget: int, noise: str) -> str:
    """A unique path of `budget` octets, in shapes that make "*" patterns scan all of it: the
    costly-rule prefix repeated, the issue's `abcdefgh` prefix, or pseudo-random letters
    (`noise`, made once: generating the URL must not cost the attacker's CPU much)."""
    tag = f"-{os.getpid()}-{i}"
    shape = i % 3
    if shape == 0:
        body = "/" + "a" * budget
    elif shape == 1:
        body = "/abcdefgh" + "x" * budget
    else:
        start = (i * 7919) % (len(noise) // 2)
        body = "/" + noise[start : start + budget]
    return body[: budget - len(tag)] + tag


def path_budget(authority: str) -> int:
    overhead = len(f"GET http://{authority} HTTP/1.1\r\n")
    return REQUEST_LINE_CAP - overhead


def _attack(
    proxy_port: int,
    authorities: list[str],
    stop: EventType,
    out: Any,
    once_each: bool,
    seed: int,
) -> None:
    """Attacker process: long request lines to the hostile authorities until `stop`."""
    rnd = random.Random(seed)
    noise = "".join(rnd.choice("abcdefgh1234567890/") for _ in range(2 * REQUEST_LINE_CAP))
    client = Client(proxy_port, "attacker", ATTACK_UA)
    times: list[float] = []
    verdicts: Counter[tuple[int, str, str]] = Counter()
    i = 0
    while not stop.is_set():
        if once_each and i >= len(authorities):
            break
        authority = authorities[i % len(authorities)]
        path = long_path(i, path_budget(authority), noise)
        try:
            reply = client.get(f"http://{authority}{path}", authority)
        except OSError as exc:
            verdicts[(0, type(exc).__name__, "")] += 1
            i += 1
            continue
        times.append(reply.seconds)
        rule = next(
            (line for line in reply.body.decode(errors="replace").splitlines() if "Rule:" in line),
            "",
        )
        verdicts[(reply.status, reply.decision, rule[:110])] += 1
        i += 1
    client.close()
    out.put((times, dict(verdicts), i))


@dataclass
class Phase:
    name: str
    attackers: int
    authorities: list[str] = field(default_factory=list)
    once_each: bool = False
    new_sites: bool = False  # the bystander's every request is a first one (a new name)
    duration: float | None = None  # runs this long (the bystander's loop), attackers or not
    bystander: list[float] = field(default_factory=list)
    bystander_errors: int = 0
    sent: int = 0
    attack_times: list[float] = field(default_factory=list)
    verdicts: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    seconds: float = 0.0
    decisions: dict[float, float] = field(default_factory=dict)  # histogram delta


def run_phase(
    ctx: Any,
    phase: Phase,
    proxy: Proxy,
    healthy: Origin,
    seconds: float,
    cap: float,
    hostile: Origin | None = None,
) -> None:
    stop, out = ctx.Event(), ctx.Queue()
    procs = []
    for n in range(phase.attackers):
        mine = phase.authorities[n :: phase.attackers] if phase.once_each else phase.authorities
        procs.append(
            ctx.Process(
                target=_attack,
                args=(proxy.port, mine, stop, out, phase.once_each, n),
                daemon=True,
            )
        )
    before = decision_buckets(proxy.admin_port)
    fetched = hostile.robots_hits.value if hostile is not None else 0
    for p in procs:
        p.start()
    if phase.new_sites and hostile is not None:  # the attacker's parses are all queued first
        deadline = time.monotonic() + 30
        while hostile.robots_hits.value < fetched + phase.attackers:
            if time.monotonic() > deadline:
                raise RuntimeError("the attackers' robots.txt fetches did not happen")
            time.sleep(0.01)
    bystander = Client(proxy.port, "bystander", BYSTANDER_UA)
    authority = f"127.0.0.1:{healthy.port}"
    start = time.monotonic()
    tick = 0
    while True:
        elapsed = time.monotonic() - start
        if phase.duration is not None:
            if elapsed > phase.duration:
                break
        elif phase.once_each:
            if not any(p.is_alive() for p in procs) or elapsed > cap:
                break
        elif elapsed > seconds:
            break
        if phase.new_sites:
            if tick >= NEW_SITES:
                break
            authority = f"b{tick}.test:{healthy.port}"
        reply = bystander.get(f"http://{authority}/poll/{tick}", authority)
        if reply.status == 200:
            phase.bystander.append(reply.seconds)
        else:
            phase.bystander_errors += 1
        # the next 0.1 s boundary: ticks missed while a reply was slow are skipped, not bunched
        tick = max(tick + 1, math.ceil((time.monotonic() - start) / 0.1))
        time.sleep(max(0.0, start + tick * 0.1 - time.monotonic()))
    phase.seconds = time.monotonic() - start
    stop.set()
    for _ in procs:
        times, verdicts, sent = out.get(timeout=60)
        phase.sent += sent
        phase.attack_times.extend(times)
        phase.verdicts.update(verdicts)
    for p in procs:
        p.join(30)
    bystander.close()
    after = decision_buckets(proxy.admin_port)
    phase.decisions = {le: after[le] - before.get(le, 0.0) for le in after}


def decision_buckets(admin_port: int) -> dict[float, float]:
    """crawlguard_decision_seconds cumulative bucket counts (le -> count), from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[float, float] = {}
    for m in re.finditer(r'^crawlguard_decision_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        out[float(m.group(1))] = float(m.group(2))
    return out


def metric_lines(admin_port: int, prefix: str) -> list[str]:
    """The /metrics sample lines whose name starts with `prefix` (histogram buckets left out)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return [
        line
        for line in text.splitlines()
        if line.startswith(prefix) and "_bucket{" not in line and "_created" not in line
    ]


def bucket_quantile(delta: dict[float, float], q: float) -> str:
    """The smallest bucket bound holding the q-quantile of the phase's decisions."""
    total = delta.get(float("inf"), 0.0)
    if not total:
        return "-"
    for le in sorted(delta):
        if delta[le] >= q / 100 * total:
            return "> 5 s" if le == float("inf") else f"<= {le * 1000:g}"
    return "-"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(v: float) -> str:
    return f"{v * 1000:7.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--phase-seconds", type=float, default=6.0)
    parser.add_argument("--names-cap", type=float, default=75.0, help="bound of the names phase")
    parser.add_argument(
        "--queue-seconds", type=float, default=30.0, help="length of the parse-queue phase"
    )
    args = parser.parse_args()
    ctx = mp.get_context("fork")
    hostile = start_origin(ctx, hostile=True)
    healthy = start_origin(ctx, hostile=False)
    tmp = Path(tempfile.mkdtemp(prefix="crawlguard-bystander-"))
    proxy = Proxy(tmp, proxy_config(tmp, [hostile.port, healthy.port]))
    started, load_before = time.monotonic(), os.getloadavg()[0]
    hp = hostile.port
    issue, caps, plain = f"127.0.0.1:{hp}", f"caps.test:{hp}", f"plain.test:{hp}"
    names = [f"h{i}.test:{hp}" for i in range(SPELLINGS)]
    at_once = [f"q{i}.test:{hp}" for i in range(AT_ONCE)]
    phases = [
        Phase("baseline (no attacker)", 0),
        Phase("1 attacker, issue-9 file (too complex)", 1, [issue]),
        Phase("3 attackers, issue-9 file (too complex)", 3, [issue]),
        Phase("3 attackers, control: 'Disallow: /' file", 3, [plain]),
        Phase(f"3 attackers, file at the caps ({MAX_WILDCARD_RULES} '*' rules)", 3, [caps]),
        Phase(f"3 attackers, {SPELLINGS} names x 500 KiB file (uncached)", 3, names, True),
        Phase("baseline again (after)", 0),
        Phase(
            f"{AT_ONCE} names at once x 500 KiB; bystander: new sites",
            AT_ONCE,
            at_once,
            True,
            new_sites=True,
            duration=args.queue_seconds,
        ),
    ]
    warmups: dict[str, Reply] = {}
    try:
        authority = f"127.0.0.1:{healthy.port}"
        warm = Client(proxy.port, "bystander", BYSTANDER_UA)
        assert warm.get(f"http://{authority}/warm", authority).status == 200
        warm.close()
        # The two hostile files are fetched and parsed before the timed phases: those measure
        # decisions on a *cached* robots.txt (the issue's claim); the names phase the rest.
        probe = Client(proxy.port, "attacker", ATTACK_UA)
        costly = "/" + "a" * 60 + "b1"  # matches a rule of the caps file: disallowed too
        for label, auth in (
            ("issue-9 file", issue),
            ("file at the caps", caps),
            ("control file", plain),
        ):
            warmups[label] = probe.get(f"http://{auth}{costly}", auth)
        for phase in phases:
            print(f"... {phase.name}", file=sys.stderr, flush=True)
            run_phase(
                ctx, phase, proxy, healthy, args.phase_seconds, cap=args.names_cap, hostile=hostile
            )
        # The hostile site only is closed: the attacker tenant may still crawl the healthy one.
        on_healthy = probe.get(f"http://{authority}/attacker-elsewhere", authority)
        robots_itself = probe.get(f"http://{issue}/robots.txt", issue)
        probe.close()
        parse_metrics = metric_lines(proxy.admin_port, "crawlguard_robots_parse")
    finally:
        proxy.stop()
        for origin in (hostile, healthy):
            origin.proc.terminate()
            origin.proc.join(10)
    total = time.monotonic() - started

    print(
        f"crawlguard bystander benchmark (issue 9), {time.strftime('%Y-%m-%d %H:%M %Z')}: "
        f"nproc={os.cpu_count()}, python {sys.version.split()[0]}, 1-min load average "
        f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after (other work on the machine "
        "shows up in every phase, the baselines too)"
    )
    print(
        f"caps: {MAX_WILDCARD_RULES} '*' rules, {MAX_WILDCARD_PATTERN}-octet patterns, "
        f"MATCH_BUDGET {MATCH_BUDGET // 1024} KiB, robots.txt parsed up to {MAX_BYTES // 1024} "
        f"KiB; attacker request lines {REQUEST_LINE_CAP} octets (the proxy's cap)"
    )
    for label, reply in warmups.items():
        print(
            f"first request (fetch + parse) on the {label}: {reply.seconds * 1000:.0f} ms, "
            f"{reply.status} {reply.decision}"
        )
    print()
    print("bystander: GET on the healthy site every 0.1 s, through the proxy (ms)")
    head = f"{'phase':52} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} {'non-200':>7}"
    print(head)
    print("-" * len(head))
    for ph in phases:
        b = ph.bystander
        print(
            f"{ph.name:52} {len(b):4d} {ms(pct(b, 50))} {ms(pct(b, 95))} {ms(pct(b, 99))} "
            f"{ms(max(b) if b else float('nan'))} {ph.bystander_errors:7d}"
        )
    print()
    print("attackers: request to the hostile site, round trip through the proxy (ms)")
    head = (
        f"{'phase':52} {'reqs':>6} {'req/s':>6} {'p50':>7} {'p99':>7} {'max':>7} {'secs':>5}"
        f"  {'decision p50':>12} {'p99':>8} {'<=5 ms':>7}"
    )
    print(head)
    print("-" * len(head))
    for ph in phases:
        if not ph.attackers:
            continue
        a = ph.attack_times
        rate = len(a) / ph.seconds if ph.seconds else 0.0
        d = ph.decisions
        share = d.get(0.005, 0.0) / d[float("inf")] * 100 if d.get(float("inf")) else 0.0
        print(
            f"{ph.name:52} {len(a):6d} {rate:6.0f} {ms(pct(a, 50))} {ms(pct(a, 99))} "
            f"{ms(max(a) if a else float('nan'))} {ph.seconds:5.1f}  "
            f"{bucket_quantile(d, 50):>12} {bucket_quantile(d, 99):>8} {share:6.1f}%"
        )
    print(
        "  decision p50/p99/<=5 ms: crawlguard_decision_seconds (the proxy's own histogram, "
        "bucket bounds in ms) over the phase, bystander requests included"
    )
    print()
    print("verdicts the attackers got (numbers in rules shown as N):")
    for ph in phases:
        merged: Counter[str] = Counter()
        for (status, decision, rule), n in ph.verdicts.items():
            merged[f"{status} {decision}: {re.sub(r'[0-9]+-octet', 'N-octet', rule)}"] += n
        for text, n in merged.most_common():
            print(f"  {ph.name[:44]:44} {n:5d} x {text}")
    names_phase, queue_phase = phases[5], phases[7]
    print()
    print(
        f"names phase: {names_phase.sent}/{SPELLINGS} names requested within its bound; "
        f"hostile origin: {hostile.robots_hits.value} robots.txt fetches, "
        f"{hostile.page_hits.value} page hits (must be 0)"
    )
    slowest = max(queue_phase.attack_times, default=float("nan"))
    print(
        f"parse-queue phase: {queue_phase.sent}/{AT_ONCE} attacker first requests answered "
        f"(slowest {ms(slowest).strip()} ms); the bystander's {len(queue_phase.bystander)} "
        f"first requests to new sites (each fetched and parsed): p50 "
        f"{ms(pct(queue_phase.bystander, 50)).strip()} ms, max "
        f"{ms(max(queue_phase.bystander, default=float('nan'))).strip()} ms, "
        f"{queue_phase.bystander_errors} non-200"
    )
    print("parse queue metrics at the end (absent before issue 18):")
    for line in parse_metrics or ["  (none)"]:
        print(f"  {line}")
    print(
        f"attacker tenant on the healthy site: {on_healthy.status} {on_healthy.decision}; "
        f"on the hostile site's /robots.txt: {robots_itself.status} {robots_itself.decision}; "
        f"total run {total:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
