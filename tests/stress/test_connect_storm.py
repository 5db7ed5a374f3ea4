"""A connect storm, then everyone drops and resumes at once."""

from __future__ import annotations

import pytest

from tests.stress.scenarios import QUICK, connect_storm

pytestmark = pytest.mark.e2e


async def test_storm_of_connects_drops_and_resumes_loses_nothing() -> None:
    """300 clients mid-turn drop and resume at once: all resumed:true with the whole turn."""
    report = await connect_storm(QUICK)
    assert report.leaks.clean, report.leaks.summary()
