"""Peers that go quiet: unanswered pings, half-open sockets, reset connections."""

from __future__ import annotations

import pytest

from tests.stress.scenarios import QUICK, silent_peers

pytestmark = pytest.mark.e2e


async def test_mute_half_open_and_reset_peers_are_closed_and_cleaned_up() -> None:
    """4001 within the heartbeat, half-open sockets freed, resets detached; then no leaks."""
    report = await silent_peers(QUICK)
    assert report.leaks.clean, report.leaks.summary()
