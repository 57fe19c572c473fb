"""Fixtures shared by the integration test files."""

import pytest

from integration.testhost import SUITES


@pytest.fixture(scope="module", params=list(SUITES), ids=list(SUITES.values()))
def suite(request) -> str:
    """The Debian suite of a module's test host (bookworm = Debian 12, trixie = Debian 13): a host
    fixture that takes it (`TestHost(ips=..., suite=suite)`) runs the whole module on each."""
    return request.param
