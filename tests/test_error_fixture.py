"""The suite-wide check that a server logged no error fails the test that caused one."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_an_error_logged_during_a_test_fails_it(pytester: pytest.Pytester) -> None:
    """A test during which any logger records ERROR fails, unless marked server_errors."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import logging
        import pytest

        def test_logs():
            logging.getLogger("npc_server.x").error("boom")

        @pytest.mark.server_errors("on purpose")
        def test_marked():
            logging.getLogger("npc_server.x").error("boom")

        def test_quiet():
            logging.getLogger("npc_server.x").warning("fine")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_logs*", "the server logged errors:", "npc_server.x: boom"]
    )
