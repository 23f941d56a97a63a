from __future__ import annotations

from collections.abc import Iterator

import pytest
import trustme
from harness import LocalOrigin


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
