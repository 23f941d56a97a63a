from __future__ import annotations

from collections.abc import Iterator

import pytest
import trustme
from harness import LocalOrigin, Proxy, base_config
from hypothesis import settings
from processstate import Snapshot

# No test asserts wall-clock time, Hypothesis included: its default 200 ms deadline per example
# fails a test when a busy machine is slow, not when the code is. Costs are counted instead
# (tests/costs.py) and timed in benchmarks/.
settings.register_profile("crawlguard", deadline=None)
settings.load_profile("crawlguard")


@pytest.fixture(autouse=True)
def process_state() -> Iterator[None]:
    """Every test starts with mitmproxy, h11 and crawlguard's process-wide settings as the last
    one found them: what a test patched in-process (by running the addon, the lean master,
    the head caps) is put back after it (tests/processstate.py)."""
    snapshot = Snapshot.take()
    yield
    snapshot.restore()


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(test_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("test-ca") / "ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def server_cert(test_ca: trustme.CA) -> trustme.LeafCert:
    return test_ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def origin() -> Iterator[LocalOrigin]:
    o = LocalOrigin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, ca_file: str) -> Iterator[Proxy]:
    """One proxy per test module on the default test config, trusting the test CA upstream."""
    tmp = tmp_path_factory.mktemp("proxy")
    p = Proxy(base_config(tmp, proxy={"upstream_ca_file": ca_file}), tmp)
    yield p
    p.stop()
