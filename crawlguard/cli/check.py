"""`crawlguard check`: offline robots.txt verdicts through the same rules code as the proxy.

Two modes. Per URL: `--robots-file F --user-agent UA URL...` prints one line (or, with
`--json`, one JSON object) per URL; exit 0 if all are allowed, 1 if any is disallowed.
Batch: `--cases FILE|-` reads JSON lines {"robots", "user_agent", "url"} and writes one
{"allowed", "crawl_delay", "rule"} line per input line, same order; blank lines are skipped.
The input is validated as a whole first, so bad input (exit 2) never yields partial output.
In both modes the product token is `policy.ua.product_token_of(user_agent)`: the derivation the
proxy uses too (`UAVerdict.token`), so check and proxy match the same robots.txt group. The
per-URL output names the agents of the merged group that applied (`group: acmebot, *`); the
batch output format is fixed by the SPEC and has no such key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crawlguard.cli.progress import Progress
from crawlguard.policy.robots import MAX_BYTES, RobotsRules, RobotsVerdict
from crawlguard.policy.ua import product_token_of

EXIT_ALLOWED, EXIT_DISALLOWED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Input the command cannot judge; reported on stderr with exit code 2."""


def register(sub: Any) -> None:  # argparse._SubParsersAction
    p = sub.add_parser(
        "check",
        help="offline robots.txt verdicts for a user agent and URLs",
        description="Offline robots.txt verdicts (RFC 9309) with the proxy's own rules code. "
        "Exit 0: all allowed, 1: any disallowed, 2: bad input.",
    )
    p.add_argument("--robots-file", metavar="F", help="robots.txt to apply ('-' = stdin)")
    p.add_argument("--user-agent", metavar="UA", help="the crawler's full User-Agent")
    p.add_argument("--json", action="store_true", help="one JSON object per URL")
    p.add_argument(
        "--cases",
        metavar="FILE",
        help='batch mode: JSON lines {"robots", "user_agent", "url"} ("-" = stdin)',
    )
    p.add_argument("urls", nargs="*", metavar="URL", help="absolute URLs or paths")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # URLs from argv may hold undecodable octets
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        if args.cases is not None:
            if args.robots_file or args.user_agent is not None or args.urls or args.json:
                raise BadInput("--cases takes no --robots-file, --user-agent, --json or URLs")
            return _run_cases(args.cases)
        return _run_urls(args)
    except BadInput as exc:
        print(f"crawlguard check: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run_urls(args: argparse.Namespace) -> int:
    missing = [
        flag
        for flag, value in (("--robots-file", args.robots_file), ("--user-agent", args.user_agent))
        if value is None
    ]
    if missing or not args.urls:
        raise BadInput(f"needs {', '.join([*missing, 'URL...'] if not args.urls else missing)}")
    token = product_token_of(args.user_agent)
    if not token:
        raise BadInput(f"no product token ([A-Za-z_-]+) in user agent {args.user_agent!r}")
    rules = RobotsRules.parse(_read_robots(args.robots_file))
    any_disallowed = False
    for url in args.urls:
        verdict = rules.decide(token, url)
        any_disallowed |= not verdict.allowed
        if args.json:
            print(json.dumps(_url_object(url, token, rules, verdict), ensure_ascii=False))
        else:
            print(_url_line(url, verdict))
    return EXIT_DISALLOWED if any_disallowed else EXIT_ALLOWED


def _read_robots(name: str) -> bytes:
    try:
        body = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read robots file {name!r}: {exc.strerror or exc}") from exc
    if len(body) > MAX_BYTES:
        print(
            f"crawlguard check: warning: {name} is {len(body)} bytes; only the first "
            f"{MAX_BYTES} are parsed (RFC 9309 §2.5)",
            file=sys.stderr,
        )
    return body


def _url_object(
    url: str, token: str, rules: RobotsRules, verdict: RobotsVerdict
) -> dict[str, object]:
    return {
        "url": url,
        "allowed": verdict.allowed,
        "rule": verdict.rule,
        "group": list(verdict.agents),
        "crawl_delay": verdict.crawl_delay,
        "request_rate": list(verdict.request_rate) if verdict.request_rate else None,
        "product_token": token,
        "robots_sha256": rules.sha256,
    }


def _url_line(url: str, verdict: RobotsVerdict) -> str:
    fields = [
        "allowed" if verdict.allowed else "disallowed",
        url,
        f"rule: {verdict.rule}" if verdict.rule is not None else "rule: (none matched)",
        f"group: {', '.join(verdict.agents) or '(none)'}",
        f"crawl-delay: {_seconds(verdict.crawl_delay)}",
    ]
    if verdict.request_rate is not None:
        requests, seconds = verdict.request_rate
        fields.append(f"request-rate: {requests}/{_seconds(seconds)}")
    return "\t".join(fields)


def _seconds(value: float | None) -> str:
    if value is None:
        return "none"
    return f"{value:g}s"


def _run_cases(name: str) -> int:
    try:
        if name == "-":
            text = sys.stdin.buffer.read().decode("utf-8")
        else:
            text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read cases {name!r}: {exc}") from exc
    cases = [_case(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    parsed: dict[str, RobotsRules] = {}  # a batch often repeats one robots.txt
    out = []
    progress = Progress("checking cases", len(cases))
    for done, (robots, user_agent, url) in enumerate(cases, 1):
        progress.update(done)
        rules = parsed.get(robots)
        if rules is None:
            rules = parsed[robots] = RobotsRules.parse(_utf8(robots))
        verdict = rules.decide(product_token_of(user_agent), url)
        out.append(
            json.dumps(
                {
                    "allowed": verdict.allowed,
                    "crawl_delay": verdict.crawl_delay,
                    "rule": verdict.rule,
                },
                ensure_ascii=False,
            )
        )
    progress.done()
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    return EXIT_ALLOWED


def _utf8(text: str) -> bytes:
    """JSON may carry lone surrogates ("\\udc80"); they stand for raw octets, not an error."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _case(number: int, line: str) -> tuple[str, str, str]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise BadInput(f"cases line {number}: not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise BadInput(f"cases line {number}: expected a JSON object")
    values = []
    for key in ("robots", "user_agent", "url"):
        value = obj.get(key)
        if not isinstance(value, str):
            raise BadInput(f"cases line {number}: {key!r} must be a string")
        values.append(value)
    return values[0], values[1], values[2]
