"""`crawlguard lint-ua`: the proxy's user-agent verdict, offline, for crawler developers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from crawlguard.policy.decisions import ADVICE
from crawlguard.policy.ua import lint, product_token_problem


def register(sub: Any) -> None:  # argparse._SubParsersAction
    parser = sub.add_parser(
        "lint-ua",
        help="check a user agent against the user-agent policy",
        description="Say whether a user agent passes the user-agent policy, and if not, why "
        "and how to comply. Exit 0 if it passes, 1 if not, 2 on bad input.",
    )
    parser.add_argument("user_agent", metavar="UA", help="the User-Agent string to check")
    parser.add_argument(
        "--product-token",
        dest="product_tokens",
        metavar="T",
        action="append",
        default=[],
        help="a product token registered for your tenant (repeatable); without it, any "
        "descriptive user agent passes",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tokens: list[str] = args.product_tokens
    for token in tokens:
        problem = product_token_problem(token)
        if problem:
            print(f"crawlguard lint-ua: product token {token!r} {problem}", file=sys.stderr)
            return 2
    verdict = lint(args.user_agent, tokens)
    advice = "" if verdict.allowed else ADVICE.get(verdict.kind, "")
    if args.json:
        result = {
            "user_agent": args.user_agent,
            "pass": verdict.allowed,
            "kind": verdict.kind.value,
            "rule": verdict.rule,
            "reason": verdict.reason,
            "advice": advice or None,
            "product_tokens": tokens,
            "robots_token": verdict.token,
        }
        print(json.dumps(result, ensure_ascii=False))
    else:
        status = "PASS" if verdict.allowed else "FAIL"
        print(f"{status} {verdict.kind.value} ({verdict.rule})")
        print(f"  {verdict.reason}")
        if advice:
            print(f"  How to comply: {advice}")
        if verdict.allowed and verdict.token:
            print(f"  robots.txt groups are matched with the product token {verdict.token}.")
        if verdict.allowed and not tokens:
            print("  Note: without --product-token, the tenant-token check was skipped.")
    return 0 if verdict.allowed else 1
