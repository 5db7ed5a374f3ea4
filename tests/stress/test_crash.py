"""The server process is killed mid-turn and started again."""

from __future__ import annotations

import pytest

from tests.stress.scenarios import QUICK, crash_restart

pytestmark = pytest.mark.e2e


async def test_sigkill_mid_turn_then_restart_gives_clean_new_sessions() -> None:
    """After SIGKILL and a restart, old resume info gets resumed:false and a clean session."""
    report = await crash_restart(QUICK)
    assert report.leaks.clean, report.leaks.summary()
