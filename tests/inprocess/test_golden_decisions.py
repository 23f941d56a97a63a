"""The decision table (tests/golden/decisions.py) written by today's pipeline equals the one the
decision path before the redesign wrote (tests/data/decisions_golden.jsonl): the order of
checks moved into `crawlguard.policy.pipeline` without changing one verdict.

When a decision changes on purpose, regenerate the table with
`python tests/golden/decisions.py tests/data/decisions_golden.jsonl` and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "data" / "decisions_golden.jsonl"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))

import decisions  # noqa: E402


async def test_the_pipeline_decides_the_golden_table(tmp_path: Path) -> None:
    expected = [json.loads(line) for line in TABLE.read_text().splitlines()]
    rows = [
        json.loads(json.dumps(r)) for r in await decisions.decide_all(decisions.corpus(), tmp_path)
    ]
    assert len(rows) == len(expected)
    differ = [(e, r) for e, r in zip(expected, rows, strict=True) if e != r]
    assert not differ, f"{len(differ)} decisions changed; first: {differ[0]}"


def test_the_table_covers_every_step() -> None:
    """The corpus reaches every step of the pipeline (a table of only `allowed` pins nothing)."""
    kinds = {json.loads(line).get("decision") for line in TABLE.read_text().splitlines()}
    for kind in ("allowed", "request-invalid", "destination-forbidden", "ua-missing",
                 "ua-generic", "ua-undescriptive", "ua-mismatch", "ua-impersonation",
                 "ua-ambiguous", "tenant-limit", "robots-disallow", "crawl-delay"):  # fmt: skip
        assert kind in kinds, kind
