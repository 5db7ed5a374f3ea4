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


def create_broker(redis_url: str = "", node_id: str = "") -> Broker:
    """In memory for one process; with a Redis URL, a node of a cluster."""
    if not redis_url:
        return MemoryBroker(node_id)
    from npc_server.brokers.redis import RedisBroker

    return RedisBroker(redis_url, node_id)
