"""A stalled reader in a busy room: closed 4000, its socket freed, the room unaffected."""

from __future__ import annotations

import pytest

from tests.stress.scenarios import QUICK, stalled_reader

pytestmark = pytest.mark.e2e


async def test_stalled_reader_in_a_busy_room_is_closed_4000_and_its_socket_freed() -> None:
    """A player who stops reading is closed 4000, freed within write_timeout + 5 s; no leaks."""
    report = await stalled_reader(QUICK)
    assert report.leaks.clean, report.leaks.summary()
