"""Brokers: how published frames reach subscribed sessions (`base.Broker`)."""

from __future__ import annotations

from typing import Any

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
    "live_redis",
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


def live_redis(broker: Broker) -> Any:
    """The redis-py client of a broker on Redis while Redis is up; None in one process
    (no client) or while Redis is away (what then cannot be asked is decided here)."""
    client = getattr(broker, "client", None)
    return client if client is not None and broker.available else None
