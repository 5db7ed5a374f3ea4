"""Generation backends that raise, crash, hang or never stop."""

from __future__ import annotations

import pytest

from tests.stress.scenarios import QUICK, backend_faults

pytestmark = pytest.mark.e2e


@pytest.mark.server_errors("backends that crash on purpose are logged")
async def test_backend_faults_end_turns_and_the_generation_cap_recovers() -> None:
    """Turns end error/timeout with backend_error to the speaker; busy at the cap, then free."""
    report = await backend_faults(QUICK)
    assert report.leaks.clean, report.leaks.summary()
