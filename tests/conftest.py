"""Every test: the server it ran must not have logged an error or a traceback.

Client input, however bad, is answered with an error frame, an HTTP status or
a close code; a server that logs ERROR or a traceback instead has a bug. A
test that provokes a server-side failure on purpose (a backend that crashes)
says so with `@pytest.mark.server_errors("why")`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.redis import RedisServer


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_errors(reason): the test provokes server errors on purpose"
    )


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    handler = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if request.node.get_closest_marker("server_errors") is not None:
        return
    if handler.records:
        lines = [f"{r.name}: {r.getMessage()}" for r in handler.records[:5]]
        pytest.fail("the server logged errors:\n" + "\n".join(lines), pytrace=False)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A real redis-server of its own on a free loopback port, for one test."""
    from tests.support.redis import redis_server  # here: this file is also used alone

    with redis_server() as server:
        yield server
