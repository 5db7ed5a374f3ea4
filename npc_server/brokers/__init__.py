"""Brokers: how published frames reach subscribed sessions (`base.Broker`)."""

from __future__ import annotations

from npc_server.brokers.base import (
    Broker,
    BrokerStatistics,
    Subscriber,
    player_channel,
    room_channel,
    session_channel,
)
from npc_server.brokers.memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerStatistics",
    "MemoryBroker",
    "Subscriber",
    "create_broker",
    "player_channel",
    "room_channel",
    "session_channel",
]


def create_broker() -> Broker:
    """The broker for this configuration: in memory, for one process."""
    return MemoryBroker()
