"""docs/reference/ is generated from the code (docs/reference/generate.py, `make docs`): the
committed pages must equal what the generator writes now, so a new config key, flag, decision
kind or metric cannot ship undocumented, and a changed default cannot leave a stale page."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference"


def _generator() -> types.ModuleType:
    path = REFERENCE / "generate.py"
    spec = importlib.util.spec_from_file_location("docs_reference_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _generator()


@pytest.mark.parametrize("name", sorted(GENERATE.PAGES))
def test_committed_reference_page_equals_the_generated_one(name: str) -> None:
    committed = (REFERENCE / name).read_text()
    assert committed == GENERATE.PAGES[name](), f"docs/reference/{name} is stale: run `make docs`"


def test_every_config_key_flag_kind_and_metric_is_listed() -> None:
    """The generator walks the real objects: spot-check that it found them, not an empty walk."""
    from crawlguard.admin.metrics import Metrics
    from crawlguard.cli import COMMANDS
    from crawlguard.policy.decisions import Kind

    config = GENERATE.config_page()
    for key in ("proxy.listen_port", "store.url", "pacing.scope", "tenants[].product_tokens",
                "tenancy.rotate_grace"):  # fmt: skip
        assert f"| `{key}` |" in config, key
    cli = GENERATE.cli_page()
    for command in COMMANDS:
        assert f"## `crawlguard {command}`" in cli, command
    assert "`--upstream-ca` `FILE`" in cli or "`--upstream-ca`" in cli
    decisions = GENERATE.decisions_page()
    for kind in Kind:
        assert f"| `{kind.value}` |" in decisions, kind
    metrics = GENERATE.metrics_page()
    assert metrics.count("| `crawlguard_") >= len(
        [v for v in vars(Metrics()).values() if hasattr(v, "_name")]
    )
    assert "| `crawlguard_requests_total` | counter | `tenant`, `decision` |" in metrics


def test_a_config_key_without_a_docstring_is_an_error() -> None:
    from pydantic import BaseModel

    class Section(BaseModel):
        documented: int = 1
        """Has a meaning."""
        bare: int = 2

    with pytest.raises(SystemExit, match="bare has no docstring"):
        list(GENERATE.config_rows(Section, "x."))
