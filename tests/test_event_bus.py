"""The node's event bus: listeners in order, a failing one logged and contained."""

from __future__ import annotations

import logging

import pytest

from npc_server.events import DrainStarted, EventBus, NodeEvent


@pytest.mark.server_errors("a listener fails on purpose; the bus logs it")
def test_a_failing_listener_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One listener raising never stops the next listener nor reaches the emitter."""
    bus = EventBus()
    heard: list[NodeEvent] = []

    def broken(event: NodeEvent) -> None:
        raise RuntimeError("listener bug")

    bus.subscribe(broken)
    bus.subscribe(heard.append)
    with caplog.at_level(logging.ERROR):
        bus.emit(DrainStarted(3))
    assert heard == [DrainStarted(3)]
    assert "an event listener failed on draining" in caplog.text


def test_unsubscribe_stops_delivery_and_listened_follows() -> None:
    """The function subscribe returns removes the listener; `listened` tracks it."""
    bus = EventBus()
    heard: list[NodeEvent] = []
    remove = bus.subscribe(heard.append)
    assert bus.listened
    remove()
    remove()
    bus.emit(DrainStarted(1))
    assert heard == [] and not bus.listened
