"""The offline commands that take `--config` (`explain --tenant`, `report`) know the tenants of
a `tenancy.source: store` config: the registry's, not the file's (which may list none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from harness import GOOD_UA, base_config

from crawlguard.cli import main

ROBOTS = "User-agent: *\nDisallow: /private/\n"


@pytest.fixture
def store_config(tmp_path: Path) -> Path:
    path = tmp_path / "crawlguard.yaml"
    cfg = base_config(tmp_path, tenants=[])
    cfg["tenancy"] = {"source": "store"}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_explain_and_report_read_the_registry(
    store_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(store_config)
    assert main(["tenants", "--config", cfg, "add", "--id", "acme", "--product-token",
                 "AcmeBot", "--mode", "monitor"]) == 0  # fmt: skip
    assert main(["tenants", "--config", cfg, "add", "--id", "globex", "--product-token",
                 "GlobexCrawler"]) == 0  # fmt: skip
    capsys.readouterr()
    robots = tmp_path / "robots.txt"
    robots.write_text(ROBOTS)
    common = ["--robots-file", str(robots), "--config", cfg, "--tenant", "acme", "--json"]
    assert main(["explain", "https://s.example/a", "--user-agent", GOOD_UA, *common]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["tenant"]["id"] == "acme" and obj["tenant"]["mode"] == "monitor"
    # the other registry tenant's token is foreign to acme, as in the proxy
    foreign = "GlobexCrawler/1.0 (+https://acme.example/bot)"
    assert main(["explain", "https://s.example/a", "--user-agent", foreign, *common]) == 1
    assert json.loads(capsys.readouterr().out)["decision"] == "ua-mismatch"
    # report lists the registry's quiet tenants
    assert main(["report", "--config", cfg, "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "acme" in out and "globex" in out


def test_tenants_import_names_the_file_of_a_yaml_error(
    store_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "tenants.yaml"
    bad.write_text("tenants:\n  - id: acme\n   product_tokens: [AcmeBot]\n")  # bad indent
    assert main(["tenants", "--config", str(store_config), "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "YAML syntax error" in err and str(bad) in err.split("YAML syntax error", 1)[1]
    assert "<unicode string>" not in err
