"""`crawlguard` command line: one module per command group registers its sub-parser."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# The module that registers each command, in --help order. `crawlguard <command>` imports that
# module alone: `violations` or `check` start without the proxy's imports (the config models,
# the user-agent dataset, mitmproxy), and `run` without the other commands'.
MODULES = ("run", "check", "lint", "violations", "explain", "dev", "tenants", "store")
COMMANDS = {
    "run": "run",
    "reload": "run",
    "ca": "run",
    "check": "check",
    "lint-ua": "lint",
    "violations": "violations",
    "report": "violations",
    "robots-txt": "violations",
    "explain": "explain",
    "dev": "dev",
    "tenants": "tenants",
    "store": "store",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; for a known `command`, only its module's parsers are real and the other
    commands are placeholders (so a mistyped command still lists every choice)."""
    from crawlguard import __version__

    parser = argparse.ArgumentParser(
        prog="crawlguard", description="Crawler-etiquette enforcement proxy."
    )
    parser.add_argument("--version", action="version", version=f"crawlguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = COMMANDS.get(command or "")
    for name in MODULES:
        if wanted is None or name == wanted:
            importlib.import_module(f"crawlguard.cli.{name}").register(sub)
    if wanted is not None:
        for other, module in COMMANDS.items():
            if module != wanted:
                sub.add_parser(other)  # never dispatched: argv names `command`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_in if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(args_in)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
