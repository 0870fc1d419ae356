import pytest

from tests.golden import Golden, pin_consoles


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/ from the current output")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture
def golden(request, monkeypatch, tmp_path) -> Golden:
    """Compares output with tests/golden/ after normalising floats, versions and ``tmp_path``
    (tests/golden.py); gradscope's consoles render at the golden width for the test."""
    pin_consoles(monkeypatch)
    return Golden(request.config.getoption("--update-golden"), {str(tmp_path): "<tmp>"})
