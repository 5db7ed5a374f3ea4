"""Fuzzed and malformed frames on a live socket get exactly the specified answers."""

from __future__ import annotations

import pytest

from tests.stress.scenarios import QUICK, malformed_protocol

pytestmark = pytest.mark.e2e


async def test_fuzzed_frames_get_the_specified_errors_and_closes() -> None:
    """bad_frame, unknown_type, too_long, 1009, 4500 and 4501 as specified; no crash, no leak."""
    report = await malformed_protocol(QUICK)
    assert report.leaks.clean, report.leaks.summary()
