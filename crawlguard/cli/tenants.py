"""`crawlguard tenants --config C {add|list|show|set|rotate|disable|import}`: the tenant registry
(`tenancy.source: store`, docs/operators/tenancy.md) from the command line.

A new token (`add`, `rotate`) is the only thing printed on stdout, once, so a script can
capture it; what happened goes to stderr. Exit codes, as for the other operator commands:
0 done, 1 refused by the registry's state (no such tenant, the id exists, the tenant is
disabled), 2 bad input or a config / database to fix (the error as the API's JSON on stderr).
Every change is audited with the actor `cli:<OS user>`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

STATUS_EXIT = {404: 1, 409: 1}  # refused by the registry's state; anything else: 2


class _Fail(Exception):
    """An operator-facing error: `payload` as JSON on stderr, exit `code`."""

    def __init__(self, payload: dict[str, Any], code: int = 2) -> None:
        super().__init__(payload.get("error"))
        self.payload = payload
        self.code = code


def _fail(message: str, field: str | None = None) -> _Fail:
    return _Fail({"error": message, "field": field})


def _positive_int(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or none)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (or none)")
    return value


def _positive_float(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or none)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 (or none)")
    return value


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 1000")
    return value


def _field_flags(p: argparse.ArgumentParser, *, create: bool) -> None:
    p.add_argument(
        "--product-token",
        action="append",
        dest="product_tokens",
        metavar="T",
        required=create,
        help="a crawler product token (repeat for more)"
        + ("" if create else "; the list given replaces the tenant's"),
    )
    p.add_argument("--mode", choices=("enforce", "monitor", "off"))
    p.add_argument("--pacing", choices=("reject", "delay"))
    p.add_argument("--max-concurrency", type=_positive_int, metavar="N", default=argparse.SUPPRESS)
    p.add_argument("--max-rps", type=_positive_float, metavar="R", default=argparse.SUPPRESS)
    p.add_argument(
        "--weight",
        type=_weight,
        metavar="W",
        default=argparse.SUPPRESS,
        help="the tenant's share of a busy site's budget (default 1; more than 0, at most 1000)",
    )
    for kind in ("allow", "deny"):
        p.add_argument(
            f"--{kind}-host",
            action="append",
            dest=f"{kind}_hosts",
            metavar="GLOB",
            help=f"a host glob to {kind} (repeat for more)"
            + ("" if create else "; the list given replaces the tenant's"),
        )
        if not create:
            p.add_argument(
                f"--no-{kind}-hosts",
                action="store_const",
                const=[],
                dest=f"{kind}_hosts",
                help=f"clear the tenant's {kind}_hosts",
            )


def register(sub: Any) -> None:  # argparse._SubParsersAction
    p = sub.add_parser(
        "tenants",
        help="manage the tenant registry (tenancy.source: store)",
        description="Manage the tenants kept in the store's database (tenancy.source: store). "
        "add and rotate print the new token, once, alone on stdout. Exit 0 done, 1 refused "
        "(no such tenant, the id exists, disabled), 2 bad input or a config/database problem.",
    )
    p.add_argument("--config", metavar="PATH", help="crawlguard YAML config (required)")
    ops = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_too = {"metavar": "PATH", "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}

    add = ops.add_parser("add", help="create a tenant; prints its new token once")
    add.add_argument("--id", required=True, help="the tenant id (its proxy user name)")
    _field_flags(add, create=True)

    lst = ops.add_parser("list", help="every tenant, disabled ones included")
    lst.add_argument("--format", choices=("table", "json"), default="table")

    show = ops.add_parser("show", help="one tenant as JSON")
    show.add_argument("id", metavar="ID")

    change = ops.add_parser("set", help="change a tenant's fields")
    change.add_argument("id", metavar="ID")
    _field_flags(change, create=False)

    rotate = ops.add_parser(
        "rotate", help="a new token (printed once); the old one works tenancy.rotate_grace more"
    )
    rotate.add_argument("id", metavar="ID")

    disable = ops.add_parser("disable", help="407 for the tenant everywhere; its records stay")
    disable.add_argument("id", metavar="ID")

    imp = ops.add_parser(
        "import",
        help="add tenants from a YAML file (a `tenants:` list as in the config, or a bare "
        "list); ids already there are skipped",
    )
    imp.add_argument("file", metavar="FILE", help="the YAML file, - for stdin")
    for op in (add, lst, show, change, rotate, disable, imp):
        op.add_argument("--config", **config_too)
        op.set_defaults(func=run_tenants)


def actor() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"cli:{name}"


def run_tenants(args: argparse.Namespace) -> int:
    from crawlguard.tenancy import TenancyError

    try:
        if not args.config:
            raise _fail("--config PATH is required", "config")
        registry, cfg = _open(args.config)
        try:
            return ACTIONS[args.action](registry, cfg, args)
        finally:
            registry.close()
    except TenancyError as exc:
        _print_error(exc.to_json())
        return STATUS_EXIT.get(exc.status, 2)
    except _Fail as exc:
        _print_error(exc.payload)
        return exc.code


def _print_error(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), file=sys.stderr)


def _open(config_path: str) -> tuple[Any, Any]:
    from crawlguard.config import ConfigError, load_config
    from crawlguard.tenancy import open_registry

    try:
        cfg = load_config(config_path, secrets=False)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if cfg.tenancy.source != "store":
        raise _fail(
            f"{config_path}: tenancy.source is {cfg.tenancy.source!r}: its tenants are the "
            "config file's `tenants` list; set tenancy.source: store to manage them here",
            "tenancy.source",
        )
    return open_registry(cfg), cfg


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The tenant fields the flags gave."""
    from crawlguard.tenancy.records import TENANT_FIELDS

    values = vars(args)
    out: dict[str, Any] = {}
    for name in TENANT_FIELDS:
        if name not in values:
            continue
        if values[name] is None and name not in ("max_concurrency", "max_rps"):
            continue
        out[name] = values[name]
    return out


def _show(record: Any) -> None:
    print(json.dumps(record.public(), indent=2))


def do_add(registry: Any, cfg: Any, args: argparse.Namespace) -> int:
    record, token = registry.create({"id": args.id, **_fields(args)}, actor=actor())
    print(token)
    print(
        f"tenant {record.id!r} created ({', '.join(record.product_tokens)}); its token is "
        "printed above, once: only its SHA-256 is kept",
        file=sys.stderr,
    )
    return 0


def do_list(registry: Any, cfg: Any, args: argparse.Namespace) -> int:
    records = registry.list()
    if args.format == "json":
        print(json.dumps([r.public() for r in records], indent=2))
        return 0
    rows = [("ID", "PRODUCT TOKENS", "MODE", "PACING", "LIMITS", "STATE", "UPDATED")]
    for r in records:
        limits = [
            f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in (("concurrency", r.max_concurrency), ("rps", r.max_rps))
            if value is not None
        ]
        if r.weight != 1:
            limits.append(f"weight={r.weight:g}")
        rows.append(
            (
                r.id,
                ",".join(r.product_tokens),
                r.mode,
                r.pacing,
                " ".join(limits) or "-",
                "disabled" if r.disabled else "enabled",
                r.updated_at,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def do_show(registry: Any, cfg: Any, args: argparse.Namespace) -> int:
    record = registry.get(args.id)
    if record is None:
        raise _Fail({"error": f"no tenant {args.id!r}", "field": None}, code=1)
    _show(record)
    return 0


def do_set(registry: Any, cfg: Any, args: argparse.Namespace) -> int:
    fields = _fields(args)
    if not fields:
        raise _fail("nothing to change: give at least one field flag (see --help)")
    _show(registry.update(args.id, fields, actor=actor()))
    return 0


def do_rotate(registry: Any, cfg: Any, args: argparse.Namespace) -> int:
    grace = cfg.tenancy.rotate_grace
    token = registry.rotate(args.id, actor=actor(), grace=grace)
    print(token)
    print(
        f"tenant {args.id!r}: new token printed above, once; the previous one "
        + (f"keeps working {grace:g} s more" if grace else "no longer works"),
        file=sys.stderr,
    )
    return 0


def do_disable(registry: Any, cfg: Any, args: argparse.Namespace) -> int:
    record = registry.disable(args.id, actor=actor())
    print(f"tenant {record.id!r} disabled (its records are kept)", file=sys.stderr)
    return 0


def do_import(registry: Any, cfg: Any, args: argparse.Namespace) -> int:
    import yaml

    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{args.file}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        from crawlguard.config import yaml_error_in

        where = "<stdin>" if args.file == "-" else args.file
        raise _fail(f"{args.file}: YAML syntax error: {yaml_error_in(exc, where)}") from None
    if isinstance(data, dict) and set(data) >= {"tenants"}:
        data = data["tenants"]
    if not isinstance(data, list):
        raise _fail(f"{args.file}: expected a `tenants:` list or a bare list of tenants")
    added = registry.import_file(data, actor=actor())
    ids = [item.get("id") for item in data if isinstance(item, dict)]
    for tenant_id in ids:
        if tenant_id in added:
            print(f"imported {tenant_id}")
        else:
            print(f"skipped {tenant_id} (already in the registry)")
    print(f"{len(added)} imported, {len(ids) - len(added)} skipped", file=sys.stderr)
    return 0


ACTIONS = {
    "add": do_add,
    "list": do_list,
    "show": do_show,
    "set": do_set,
    "rotate": do_rotate,
    "disable": do_disable,
    "import": do_import,
}
