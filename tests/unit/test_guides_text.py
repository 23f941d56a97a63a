"""The crawler-developer guides in docs/ (issue 13) as text: every guide shows its example file
verbatim, relative links resolve, the decisions page covers every kind and header. The examples
run against the real proxy in tests/e2e/test_guides.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from crawlguard.policy.decisions import Kind

REPO = Path(__file__).resolve().parents[2]


DOCS = REPO / "docs" / "crawlers"


EXAMPLES = DOCS / "examples"


INCLUDE = re.compile(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", re.DOTALL)


def test_every_example_is_shown_verbatim_in_its_guide() -> None:
    shown: set[str] = set()
    for guide in sorted(DOCS.glob("*.md")):
        for name, code in INCLUDE.findall(guide.read_text()):
            path = DOCS / name
            assert path.is_file(), f"{guide.name} includes missing {name}"
            assert code == path.read_text(), f"{guide.name}: code block differs from {name}"
            shown.add(path.name)
    assert shown == {p.name for p in EXAMPLES.glob("*.py")}


def test_relative_links_in_docs_resolve() -> None:
    for page in [*DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_decisions_page_covers_every_kind_and_header() -> None:
    text = (REPO / "docs" / "decisions.md").read_text()
    for kind in Kind:
        assert f"`{kind.value}`" in text, kind
    for header in ("X-Crawlguard-Decision", "Retry-After", "X-Crawlguard-Delayed",
                   "X-Crawlguard-Monitor", "auth-required"):  # fmt: skip
        assert header in text
