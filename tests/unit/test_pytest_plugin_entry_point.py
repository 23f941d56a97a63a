"""The pytest plugin (issue 13) is declared as an entry point, so installing crawlguard is enough
for pytest to find it. The plugin's fixtures at work: tests/e2e/test_pytest_plugin.py.
"""

from __future__ import annotations

import tomllib

from harness import REPO


def test_pytest_discovers_the_plugin_through_its_entry_point():
    """pyproject.toml declares the plugin, so installing crawlguard is enough."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project.get("entry-points", {}).get("pytest11", {}).get("crawlguard") == (
        "crawlguard.pytest_plugin"
    )
