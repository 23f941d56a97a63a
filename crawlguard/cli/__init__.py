"""`crawlguard` command line: one module per command group registers its sub-parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from crawlguard import __version__
    from crawlguard.cli import check, dev, explain, lint, run, violations

    parser = argparse.ArgumentParser(
        prog="crawlguard", description="Crawler-etiquette enforcement proxy."
    )
    parser.add_argument("--version", action="version", version=f"crawlguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, check, lint, violations, explain, dev):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
