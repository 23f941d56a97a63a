"""`crawlguard explain` offline (`--robots-file`), in-process: the proxy's verdict on one URL, step
by step (issue 13). The live fetches, run as a subprocess against local origins, and the
agreement with the running proxy: tests/e2e/test_explain.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import GOOD_UA, base_config, tenant

from crawlguard.cli import main

ROBOTS = """\
User-agent: *
Crawl-delay: 2
Disallow: /private/

User-agent: AcmeBot
Request-rate: 1/5
Disallow: /acme-only-no/
"""


SITE = "https://site.example"


@pytest.fixture
def robots(tmp_path: Path) -> Path:
    path = tmp_path / "robots.txt"
    path.write_text(ROBOTS)
    return path


def explain(*args: str) -> tuple[int, str]:
    """Run in-process, return (exit code, stdout)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["explain", *args])
    return code, out.getvalue()


def explain_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out = explain(*args, "--json")
    return code, json.loads(out)


def test_allowed_url_explains_every_step(robots: Path) -> None:
    code, out = explain(f"{SITE}/a", "--user-agent", GOOD_UA, "--robots-file", str(robots))
    assert code == 0
    assert "PASS allowed (ok:AcmeBot)" in out
    assert "checked like `crawlguard lint-ua`" in out  # no tenant: tokens unknown
    assert "User-agent: acmebot" in out  # the group matched, by the UA's product token
    assert "no rule: allowed" in out
    assert "interval 5 s, set by Request-rate: 1/5s" in out
    assert out.rstrip().endswith("verdict: ALLOWED: every check passes.")


def test_disallowed_url_names_rule_group_and_fix(robots: Path) -> None:
    ua = "OtherBot/2.0 (+https://other.example)"
    code, out = explain(f"{SITE}/private/x", "--user-agent", ua, "--robots-file", str(robots))
    assert code == 1
    assert "User-agent: *" in out
    assert "Disallow: /private/  -> disallowed" in out
    assert "interval 2 s, set by Crawl-delay: 2" in out
    assert "verdict: BLOCKED robots-disallow (403)" in out
    assert "how to fix: The site's robots.txt disallows this URL" in out


def test_json_carries_check_fields_and_more(robots: Path) -> None:
    code, obj = explain_json(
        f"{SITE}/x/../private/%7Ey", "--user-agent", GOOD_UA, "--robots-file", str(robots)
    )
    assert code == 0  # AcmeBot's group has no /private/ rule
    assert obj["canonical_url"] == f"{SITE}/private/~y"  # what the proxy decides on
    assert obj["origin"] == "https://site.example:443"
    assert (obj["allowed"], obj["decision"], obj["status"]) == (True, "allowed", None)
    assert obj["user_agent"]["robots_token"] == "AcmeBot"
    robots_part = obj["robots"]
    assert robots_part["group"] == ["acmebot"]
    assert robots_part["rule"] is None
    assert robots_part["source"] == "file"
    assert robots_part["robots_sha256"] == hashlib.sha256(ROBOTS.encode()).hexdigest()
    assert obj["fetch"] is None
    assert obj["pacing"] == {
        "crawl_delay": None,
        "request_rate": [1, 5.0],
        "default_min_interval": 0.0,
        "interval": 5.0,
        "set_by": "Request-rate: 1/5s",
    }


def test_generic_user_agent_is_the_deciding_step(robots: Path) -> None:
    code, obj = explain_json(
        f"{SITE}/a", "--user-agent", "python-requests/2.32", "--robots-file", str(robots)
    )
    assert code == 1
    assert obj["decision"] == "ua-generic"
    assert obj["rule"] == "generic:python-requests"
    assert "default user agents are not allowed" in obj["advice"]
    assert obj["user_agent"]["pass"] is False


def test_robots_txt_itself_is_exempt(robots: Path) -> None:
    code, out = explain(f"{SITE}/robots.txt", "--user-agent", GOOD_UA, "--robots-file", str(robots))
    assert code == 0
    assert "never blocked by robots rules" in out
    assert "none: /robots.txt itself is not paced" in out


def test_port_outside_default_allowed_ports_is_forbidden(robots: Path) -> None:
    code, obj = explain_json(
        "http://site.example:3000/", "--user-agent", GOOD_UA, "--robots-file", str(robots)
    )
    assert code == 1
    assert obj["decision"] == "destination-forbidden"
    assert obj["destination"]["reason"] == "port 3000 is not in destinations.allowed_ports"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/relative", "--user-agent", GOOD_UA], "must be absolute"),
        (["ftp://site.example/", "--user-agent", GOOD_UA], "must be absolute"),
        (["https://site.example:99999/", "--user-agent", GOOD_UA], "bad URL"),
        (["https://1.2.3.4.5/", "--user-agent", GOOD_UA], "canonical form"),
        (["https://s.example/", "--user-agent", GOOD_UA, "--robots-file", "/nonexistent"],
         "cannot read robots file"),
        (["https://s.example/", "--user-agent", GOOD_UA, "--tenant", "acme"], "needs --config"),
    ],
)  # fmt: skip
def test_bad_input_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def write_config(tmp: Path, **sections: Any) -> Path:
    path = tmp / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp, **sections)))
    return path


def test_tenant_tokens_and_pacing_mode_are_used(robots: Path, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        tenants=[
            tenant("acme", ["AcmeBot"], pacing="delay", mode="monitor"),
            tenant("globex", ["GlobexCrawler"]),
        ],
    )
    common = ["--robots-file", str(robots), "--config", str(cfg), "--tenant", "acme"]
    code, out = explain(f"{SITE}/a", "--user-agent", GOOD_UA, *common)
    assert code == 0
    assert "registered product tokens: AcmeBot" in out
    assert "held until its slot, up to 5 s" in out  # base_config: pacing.max_hold 5
    # another tenant's token in the UA: ua-mismatch, the body never names the other tenant
    foreign = "GlobexCrawler/1.0 (+https://acme.example/bot)"
    code, obj = explain_json(f"{SITE}/a", "--user-agent", foreign, *common)
    assert (code, obj["decision"]) == (1, "ua-mismatch")
    assert obj["tenant"] == {"id": "acme", "mode": "monitor", "pacing": "delay"}
    code, out = explain(f"{SITE}/a", "--user-agent", foreign, *common)
    assert "tenant acme is in mode monitor: the request is forwarded and recorded" in out


def test_unknown_tenant_exits_2(robots: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    code = main(["explain", f"{SITE}/", "--user-agent", GOOD_UA, "--robots-file", str(robots),
                 "--config", str(cfg), "--tenant", "nobody"])  # fmt: skip
    assert code == 2
