"""Installs tests/netguard.py in any interpreter started with PYTHONPATH=tests/netguard_site
and CRAWLGUARD_NETGUARD_LOG=<file>: every refused network attempt becomes a line in <file>."""

import importlib.util
import os
import sys
from pathlib import Path

if os.environ.get("CRAWLGUARD_NETGUARD_LOG"):
    _path = Path(__file__).resolve().parent.parent / "netguard.py"
    _spec = importlib.util.spec_from_file_location("netguard", _path)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules.setdefault("netguard", _module)
    _spec.loader.exec_module(_module)
    _module.install_from_env()
