"""Every relative link in README.md and docs/ resolves: the file exists and, for a `#fragment`
into a Markdown page, a heading there has that GitHub anchor. The README was cut into docs/
pages (issue 21); a moved page must not leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks: code may contain `](` that is no link."""
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            out.append(line)
    return out


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    found: set[str] = set()
    for line in _prose(page.read_text()):
        heading = re.match(r"^#{1,6} (.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_pages_exist() -> None:
    assert len(PAGES) > 20 and (REPO / "docs" / "README.md") in PAGES


def test_relative_links_resolve() -> None:
    broken: list[str] = []
    for page in PAGES:
        for line in _prose(page.read_text()):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # http:, https:, mailto:
                path, _, fragment = target.partition("#")
                dest = (page.parent / path) if path else page
                name = f"{page.relative_to(REPO)}: {target}"
                if not dest.exists():
                    broken.append(name)
                elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                    broken.append(f"{name} (no such heading)")
    assert not broken, "\n".join(broken)


def test_anchor_rule() -> None:
    page = REPO / "docs" / "crawlers" / "README.md"
    assert "before-you-crawl-check-offline" in anchors(page)
