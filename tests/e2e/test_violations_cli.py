"""`crawlguard violations` and `crawlguard report` as an operator runs them: formats, filters,
exit codes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import base_config, free_port

from crawlguard.cli import main
from crawlguard.policy.decisions import Kind
from crawlguard.policy.records import FIELDS, ViolationRecord, utc_now_iso
from crawlguard.store import open_store

ROBOTS_BODY = b"\xef\xbb\xbfUser-agent: *\r\nDisallow: /private/\r\n\xff binary tail\n"

RECORDS = [
    ViolationRecord(
        ts="2024-05-01T10:00:00.000000Z",
        tenant="acme",
        kind="robots-disallow",
        action="blocked",
        method="GET",
        url="https://shop.example/private/1",
        user_agent="AcmeBot/1.0 (+https://acme.example/bot)",
        rule="Disallow: /private/",
        crawl_delay=2.5,
        retry_after=None,
        robots_sha256=hashlib.sha256(ROBOTS_BODY).hexdigest(),
        reason="disallowed by robots.txt",
    ),
    ViolationRecord(
        ts="2024-05-02T10:00:00.000000Z",
        tenant="globex",
        kind="ua-generic",
        action="logged",
        method="POST",
        url="http://news.example/feed,with,commas",
        user_agent='python-requests/2.31 "quoted"',
        rule="python-requests",
    ),
    ViolationRecord(
        ts="2024-05-03T10:00:00.000000Z",
        tenant="acme",
        kind="crawl-delay",
        action="delayed",
        method="GET",
        url="https://shop.example/\x1b[31mred",
        user_agent="AcmeBot/1.0 (+https://acme.example/bot)",
        rule="Crawl-delay: 5",
        crawl_delay=5.0,
        retry_after=4,
        delay_seconds=3.5,
    ),
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg: dict[str, Any] = base_config(tmp_path)
    path = tmp_path / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = open_store(cfg["store"]["url"])
    try:
        for r in RECORDS:
            store.record(r, ROBOTS_BODY if r.robots_sha256 else None)
        store.add_request_counts(
            {("acme", "allowed"): 40, ("acme", "robots-disallow"): 1}, "2024-05-01T10:00:00Z"
        )
        store.add_request_counts({("globex", "ua-generic"): 1}, "2024-05-02T10:00:00Z")
    finally:
        store.close()
    return path


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawlguard", *args],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip


def violations(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(tmp_path, "violations", "--config", str(config), *args)


def test_json_is_one_array_of_full_records_newest_first(tmp_path: Path, config: Path) -> None:
    proc = violations(tmp_path, config, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, list)
    assert [tuple(d) for d in data] == [FIELDS] * 3
    assert [ViolationRecord.from_dict(d) for d in data] == RECORDS[::-1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tenant", "acme"], [2, 0]),
        (["--kind", "ua-generic"], [1]),
        (["--tenant", "acme", "--kind", "ua-generic"], []),
        (["--since", "2024-05-02T10:00:00Z"], [2, 1]),  # inclusive
        (["--since", "2024-05-02T12:00:00+02:00"], [2, 1]),
        (["--since", "2024-05-02T10:00:01"], [2]),
        (["--limit", "1"], [2]),
        (["--tenant", "acme", "--limit", "5"], [2, 0]),
        (["--since", "1d"], []),
        (["--since", "-1d"], []),  # issue 21: a negative-looking value is a value
        (["--since", "-1000w"], [2, 1, 0]),
        (["--until", "2024-05-02T10:00:00Z"], [0]),  # exclusive
        (["--since", "2024-05-01T12:00:00Z", "--until", "2024-05-03T00:00:00Z"], [1]),
        (["--until", "2024-05-04T00:00:00Z", "--limit", "2"], [2, 1]),
        (["--tenant", "acme", "--until", "-1d"], [2, 0]),
    ],
)
def test_filters(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: list[int]
) -> None:
    """In-process (same code path as the console script) to keep the suite fast."""
    code = main(["violations", "--config", str(config), "--format", "json", *args])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [ViolationRecord.from_dict(d) for d in data] == [RECORDS[i] for i in expected]


def test_csv_has_a_header_row_and_quotes_properly(tmp_path: Path, config: Path) -> None:
    proc = violations(tmp_path, config, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert tuple(rows[0]) == FIELDS
    assert len(rows) == 4
    by_field = [dict(zip(FIELDS, row, strict=True)) for row in rows[1:]]
    assert by_field[1]["url"] == "http://news.example/feed,with,commas"
    assert by_field[1]["user_agent"] == 'python-requests/2.31 "quoted"'
    assert by_field[1]["crawl_delay"] == ""  # None
    assert by_field[2]["crawl_delay"] == "2.5"


def test_csv_header_even_when_empty(tmp_path: Path, config: Path) -> None:
    proc = violations(tmp_path, config, "--format", "csv", "--tenant", "initech")
    assert proc.returncode == 0
    assert proc.stdout == ",".join(FIELDS) + "\n"


def test_table_is_aligned_and_safe_for_terminals(tmp_path: Path, config: Path) -> None:
    proc = violations(tmp_path, config)  # table is the default
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["TS", "TENANT", "KIND", "ACTION", "COUNT", "METHOD", "URL", "RULE"]
    assert len(lines) == 4
    assert "\x1b" not in proc.stdout and "\\x1b[31mred" in lines[1]
    kind_col = lines[0].index("KIND")
    assert [line[kind_col:].split()[0] for line in lines[1:]] == [
        "crawl-delay",
        "ua-generic",
        "robots-disallow",
    ]
    assert lines[3].endswith("Disallow: /private/")


def test_table_when_nothing_matches(tmp_path: Path, config: Path) -> None:
    proc = violations(tmp_path, config, "--kind", "tenant-limit")
    assert proc.returncode == 0
    assert "no violations" in proc.stdout


def test_a_missing_store_is_an_error_not_a_new_empty_one(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, store={"url": "sqlite:///fresh/var/cg.db"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = violations(tmp_path, path, "--format", "json")
    assert proc.returncode == 2
    assert f"no violation store at {tmp_path}/fresh/var/cg.db" in proc.stderr
    assert not (tmp_path / "fresh").exists()


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """The proxy and an operator in another directory find the same store."""
    (tmp_path / "etc").mkdir()
    cfg = base_config(tmp_path, store={"url": "sqlite:///var/cg.db"})
    path = tmp_path / "etc" / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from crawlguard.config import load_config
    from crawlguard.store import open_store

    loaded = load_config(path)
    assert loaded.store.url == f"sqlite:///{tmp_path}/etc/var/cg.db"
    open_store(loaded.store.url).close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = violations(elsewhere, path, "--format", "json")
    assert proc.returncode == 0, proc.stderr


def test_operator_commands_need_no_tenant_secrets(tmp_path: Path) -> None:
    """token_env names a variable only the proxy's environment has: reading records must not."""
    tenants = [{"id": "acme", "token_env": "CG_TEST_UNSET_TOKEN", "product_tokens": ["AcmeBot"]}]
    cfg = base_config(tmp_path, tenants=tenants)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from crawlguard.store import open_store

    open_store(cfg["store"]["url"]).close()  # the store the proxy would have made
    proc = violations(tmp_path, path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--since", "last week"], "invalid since"),
        (["--since", "2024-02-30"], "invalid since"),
        (["--limit", "0"], "--limit"),
        (["--limit", "many"], "--limit"),
        (["--format", "xml"], "--format"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, config: Path, args: list[str], needle: str) -> None:
    proc = violations(tmp_path, config, *args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert proc.stdout == ""


def test_missing_or_bad_config_exits_2(tmp_path: Path) -> None:
    proc = violations(tmp_path, tmp_path / "nope.yaml")
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxies: {}\n")
    proc = violations(tmp_path, bad)
    assert proc.returncode == 2
    assert "proxies" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("store_url", "needle"),
    [
        (f"postgresql://cg@127.0.0.1:{free_port()}/cg", "cannot connect to the PostgreSQL store"),
        ("sqlite:///junk.db", "junk.db"),
    ],
    ids=["postgresql-unreachable", "sqlite-junk"],
)
def test_unusable_store_exits_2(tmp_path: Path, store_url: str, needle: str) -> None:
    (tmp_path / "junk.db").write_bytes(b"not a database " * 200)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, store={"url": store_url})))
    for command in ("violations", "report"):
        proc = cli(tmp_path, command, "--config", str(path))
        assert proc.returncode == 2, (command, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_report_json(tmp_path: Path, config: Path) -> None:
    proc = cli(tmp_path, "report", "--config", str(config), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["since"] is None
    # the crawl-delay record with action `delayed` was held, then forwarded: not a violation
    assert data["tenants"]["acme"] == {
        "requests_total": 41,
        "requests": {"allowed": 40, "robots-disallow": 1},
        "violations_total": 1,
        "violations": {"robots-disallow": 1},
        "held": 1,
    }
    assert data["tenants"]["globex"]["violations"] == {"ua-generic": 1}
    # configured tenants with nothing recorded still show, with zeros
    assert data["tenants"]["initech"] == {
        "requests_total": 0,
        "requests": {},
        "violations_total": 0,
        "violations": {},
        "held": 0,
    }


def test_report_since(tmp_path: Path, config: Path) -> None:
    proc = cli(
        tmp_path, "report", "--config", str(config), "--since", "2024-05-02", "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["since"] == "2024-05-02T00:00:00.000000Z"
    assert data["tenants"]["acme"]["requests"] == {}
    assert data["tenants"]["acme"]["violations"] == {}
    assert data["tenants"]["acme"]["held"] == 1
    recent = cli(tmp_path, "report", "--config", str(config), "--since", "7d", "--format", "json")
    assert recent.returncode == 0
    since = json.loads(recent.stdout)["since"]
    assert since < utc_now_iso()
    assert all(t["violations_total"] == 0 for t in json.loads(recent.stdout)["tenants"].values())


def test_report_table(tmp_path: Path, config: Path) -> None:
    proc = cli(tmp_path, "report", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("acme", "globex", "initech", "requests", "violations", "robots-disallow"):
        assert needle in out
    summary = [line.split() for line in out.splitlines()[2:6]]
    assert summary == [
        ["TENANT", "REQUESTS", "HELD", "VIOLATIONS"],
        ["acme", "41", "1", "1"],
        ["globex", "1", "0", "1"],
        ["initech", "0", "0", "0"],
    ]
    acme = out[out.index("\nacme\n") : out.index("\nglobex\n")].split()
    assert acme[:5] == ["acme", "requests", "41", "allowed", "40"]
    assert "crawl-delay" not in acme  # held, then forwarded: not among the violations


def test_report_bad_since_exits_2(tmp_path: Path, config: Path) -> None:
    proc = cli(tmp_path, "report", "--config", str(config), "--since", "7 days")
    assert proc.returncode == 2
    assert "invalid since" in proc.stderr
    assert "ISO 8601" in proc.stderr and "30m, 24h, 7d" in proc.stderr
    assert proc.stdout == ""


ALL_KINDS = {k.value for k in Kind} - {"allowed"}


def _listed(stderr: str, label: str) -> set[str]:
    """The comma-separated values after `label` on the one error line."""
    line = stderr.strip()
    assert "\n" not in line and "Traceback" not in line, stderr
    return set(line.split(label, 1)[1].strip().split(", "))


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--kind", "robots-disalow"], ["unknown --kind 'robots-disalow'",
                                        "did you mean 'robots-disallow'?"]),
        (["--kind", "allowed"], ["allowed requests are not violations"]),
        (["--kind", ""], ["unknown --kind ''"]),
        (["--tenant", "acme", "--kind", "ua_generic"], ["did you mean 'ua-generic'?"]),
    ],
)  # fmt: skip
@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_unknown_kind_exits_2_listing_the_kinds(
    tmp_path: Path, config: Path, args: list[str], needles: list[str], fmt: str
) -> None:
    """A typo used to print "no violations" and exit 0: indistinguishable from a clean crawl."""
    proc = violations(tmp_path, config, "--format", fmt, *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    for needle in needles:
        assert needle in proc.stderr
    assert _listed(proc.stderr, "valid kinds:") == ALL_KINDS


@pytest.mark.parametrize(
    ("tenant", "hint"),
    [("acmee", "did you mean 'acme'?"), ("ACME", "did you mean 'acme'?"), ("nobody", "")],
)
def test_unknown_tenant_exits_2_listing_the_tenants(
    tmp_path: Path, config: Path, tenant: str, hint: str
) -> None:
    proc = violations(tmp_path, config, "--tenant", tenant)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"unknown --tenant {tenant!r}" in proc.stderr and hint in proc.stderr
    assert _listed(proc.stderr, "valid tenants (in the config or the store):") == {
        "acme",
        "globex",
        "initech",
    }


def test_tenants_and_kinds_only_the_store_knows_are_valid(tmp_path: Path, config: Path) -> None:
    """A tenant since removed from the config, a kind since retired: their records still
    list, and the error for a typo names them too."""
    old = ViolationRecord(
        ts="2024-04-01T10:00:00.000000Z", tenant="oldco", kind="retired-kind",
        action="blocked", method="GET", url="http://old.example/",
    )  # fmt: skip
    cfg = yaml.safe_load(config.read_text())
    store = open_store(cfg["store"]["url"])
    try:
        store.record(old)
    finally:
        store.close()
    for args in (["--tenant", "oldco"], ["--kind", "retired-kind"], ["--kind", "Retired-Kind"]):
        proc = violations(tmp_path, config, "--format", "json", *args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert [ViolationRecord.from_dict(d) for d in json.loads(proc.stdout)] == [old]
    proc = violations(tmp_path, config, "--tenant", "oldcoo")
    assert proc.returncode == 2
    assert "did you mean 'oldco'?" in proc.stderr
    assert "oldco" in _listed(proc.stderr, "(in the config or the store):")
    proc = violations(tmp_path, config, "--kind", "retired")
    assert proc.returncode == 2
    assert _listed(proc.stderr, "valid kinds:") == ALL_KINDS | {"retired-kind"}


def test_every_kind_and_configured_tenant_is_accepted(tmp_path: Path, config: Path) -> None:
    """Valid filters that match nothing are still exit 0 and an empty answer."""
    for kind in sorted(ALL_KINDS):
        code = main(["violations", "--config", str(config), "--format", "json", "--kind", kind])
        assert code == 0, kind
    proc = violations(tmp_path, config, "--tenant", "initech", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize(
    ("command", "args", "needles"),
    [
        ("violations", ["--since", "yesterday"], ["invalid since 'yesterday'", "ISO 8601",
                                                  "30m, 24h, 7d"]),
        ("violations", ["--since", "9" * 5000 + "d"], ["invalid since", "30m, 24h, 7d"]),
        ("violations", ["--since", ""], ["invalid since ''"]),
        ("report", ["--since", "1 week"], ["invalid since '1 week'", "30m, 24h, 7d"]),
        ("violations", ["--format", "xml"], ["invalid choice: 'xml'", "'table', 'json', 'csv'"]),
        ("report", ["--format", "csv"], ["invalid choice: 'csv'", "'table', 'json'"]),
    ],
)  # fmt: skip
def test_bad_since_and_format_name_the_accepted_forms(
    tmp_path: Path, config: Path, command: str, args: list[str], needles: list[str]
) -> None:
    proc = cli(tmp_path, command, "--config", str(config), *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr


def test_robots_txt_prints_the_body_in_force_byte_for_byte(tmp_path: Path, config: Path) -> None:
    rec = json.loads(violations(tmp_path, config, "--kind", "robots-disallow", "--format", "json")
                     .stdout)[0]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "crawlguard", "robots-txt", "--config", str(config),
         rec["robots_sha256"].upper()],
        capture_output=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == ROBOTS_BODY


@pytest.mark.parametrize(
    ("digest", "code", "needle"),
    [("0" * 64, 1, "no robots.txt body"), ("xyz", 2, "not a SHA-256"), ("a" * 63, 2, "64 hex")],
)
def test_robots_txt_unknown_or_bad_digest(
    tmp_path: Path, config: Path, digest: str, code: int, needle: str
) -> None:
    out = cli(tmp_path, "robots-txt", "--config", str(config), digest)
    assert out.returncode == code
    assert needle in out.stderr
    assert out.stdout == ""


def test_folded_records_show_their_count_in_every_format_and_report(
    tmp_path: Path, config: Path
) -> None:
    """A folded record stands for `count` refusals: the table shows it, json and csv carry
    count/first_ts/last_ts, and `report` counts the refusals, not the rows."""
    cfg = yaml.safe_load(config.read_text())
    store = open_store(cfg["store"]["url"])
    try:
        store.record(
            ViolationRecord(
                ts="2024-05-04T10:00:00.000000Z",
                tenant="globex",
                kind="ua-generic",
                action="logged",
                method="GET",
                url="http://news.example/loop",
                rule="python-requests",
                count=250,
                first_ts="2024-05-04T10:00:00.000000Z",
                last_ts="2024-05-04T10:00:59.000000Z",
            )
        )
    finally:
        store.close()
    table = violations(tmp_path, config, "--tenant", "globex").stdout.splitlines()
    count_col = table[0].index("COUNT")
    assert [line[count_col:].split()[0] for line in table[1:]] == ["250", "1"]
    data = json.loads(violations(tmp_path, config, "--format", "json", "--limit", "1").stdout)
    assert (data[0]["count"], data[0]["first_ts"], data[0]["last_ts"]) == (
        250,
        "2024-05-04T10:00:00.000000Z",
        "2024-05-04T10:00:59.000000Z",
    )
    rows = list(csv.DictReader(io.StringIO(violations(tmp_path, config, "--format", "csv").stdout)))
    assert [r["count"] for r in rows] == ["250", "1", "1", "1"]
    assert rows[0]["last_ts"] == "2024-05-04T10:00:59.000000Z" and rows[1]["last_ts"] == ""
    report = json.loads(cli(tmp_path, "report", "--config", str(config), "--format", "json").stdout)
    assert report["tenants"]["globex"]["violations"] == {"ua-generic": 251}
    assert report["tenants"]["globex"]["violations_total"] == 251


def test_until_before_since_exits_2(tmp_path: Path, config: Path) -> None:
    proc = violations(tmp_path, config, "--since", "2024-05-03", "--until", "2024-05-02")
    assert proc.returncode == 2 and "--until" in proc.stderr and proc.stdout == ""
    proc = violations(tmp_path, config, "--until", "soon")
    assert proc.returncode == 2 and "invalid until 'soon' for --until" in proc.stderr


def test_config_defaults_to_the_one_make_run_uses(tmp_path: Path, config: Path) -> None:
    """As `crawlguard ca`, the operator commands need no --config in the usual layout."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "crawlguard.yaml").write_text(config.read_text())
    proc = cli(tmp_path, "violations", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == len(RECORDS)
    proc = cli(tmp_path / "config", "violations")  # no config/crawlguard.yaml there
    assert proc.returncode == 2
    assert "no --config given and no config/crawlguard.yaml" in proc.stderr


def test_follow_prints_new_records_as_they_arrive(tmp_path: Path, config: Path) -> None:
    import signal
    import time

    from crawlguard.config import load_config

    proc = subprocess.Popen(
        [sys.executable, "-m", "crawlguard", "violations", "--config", str(config),
         "--follow", "--limit", "2", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        backlog = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [d["ts"] for d in backlog] == [RECORDS[1].ts, RECORDS[2].ts]  # oldest first
        fresh = ViolationRecord(
            ts=utc_now_iso(), tenant="globex", kind="ua-generic", action="logged",
            method="GET", url="http://news.example/new", user_agent="curl/8", rule="curl",
        )  # fmt: skip
        store = open_store(load_config(config, secrets=False).store.url)
        try:
            store.record(fresh, None)
        finally:
            store.close()
        line = proc.stdout.readline()  # the poll finds it (the test's timeout bounds the wait)
        assert json.loads(line)["url"] == "http://news.example/new"
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # nothing printed twice
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_follow_refuses_until(tmp_path: Path, config: Path) -> None:
    proc = violations(tmp_path, config, "--follow", "--until", "1d")
    assert proc.returncode == 2 and "--follow" in proc.stderr
