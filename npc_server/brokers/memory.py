"""The in-memory broker: one process, publications delivered in place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from npc_server.brokers.base import BrokerStatistics, MessageHandler, RemoteObserver, Subscriber
from npc_server.protocol.frames import ServerFrame

_NONE: dict[str, Subscriber] = {}


class MemoryBroker:
    """Channels as dicts of subscribers by id; delivery is a loop over one dict.

    A channel with one subscriber (a player's own channel, the common case) is
    also indexed by itself: its publish is one lookup and one push.
    """

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        self._channels: dict[str, dict[str, Subscriber]] = {}
        self._only: dict[str, Subscriber] = {}  # channels with exactly one subscriber
        self._published = 0

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._channels.setdefault(channel, {})
        subscribers[subscriber.id] = subscriber
        self._index(channel, subscribers)

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is None or subscribers.get(subscriber.id) is not subscriber:
            return
        del subscribers[subscriber.id]
        if not subscribers:
            del self._channels[channel]
        self._index(channel, subscribers)

    def _index(self, channel: str, subscribers: dict[str, Subscriber]) -> None:
        if len(subscribers) == 1:
            self._only[channel] = next(iter(subscribers.values()))
        else:
            self._only.pop(channel, None)

    def publish_nowait(self, channel: str, frame: ServerFrame, exclude: str | None = None) -> None:
        # Hot path (every delta): iterate in place; pushing never subscribes or unsubscribes.
        self._published += 1
        only = self._only.get(channel)
        if only is not None:
            if exclude is None or only.player != exclude:
                only.push_nowait(frame)
            return
        if exclude is None:
            for subscriber in self._channels.get(channel, _NONE).values():
                subscriber.push_nowait(frame)
            return
        for subscriber in self._channels.get(channel, _NONE).values():
            if subscriber.player != exclude:
                subscriber.push_nowait(frame)

    def drop_turn_nowait(self, channel: str, turn: str) -> None:
        for subscriber in self._channels.get(channel, _NONE).values():
            subscriber.drop_turn_nowait(turn)

    def subscriber_count(self, channel: str) -> int:
        return len(self._channels.get(channel, _NONE))

    def channels(self, prefix: str = "") -> list[str]:
        """The channels with a subscriber here whose names start with `prefix`."""
        return [channel for channel in self._channels if channel.startswith(prefix)]

    @property
    def available(self) -> bool:
        return True

    def when_subscribed(
        self, callback: Callable[[], None], failed: Callable[[], None] | None = None
    ) -> None:
        callback()

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            channels=len(self._channels),
            subscriptions=sum(len(s) for s in self._channels.values()),
            published=self._published,
        )

    # One process has no other node: messages have nowhere to go.

    def send_nowait(self, node: str, message: Mapping[str, Any]) -> None:
        return None

    def signal_nowait(self, channel: str, message: Mapping[str, Any]) -> None:
        return None

    def on_message(self, kind: str, handler: MessageHandler) -> None:
        return None

    def observe_remote(self, observer: RemoteObserver) -> None:
        return None

    @property
    def delivering(self) -> tuple[str, int]:
        return (self.node_id, self._published)

    def position(self) -> dict[str, int]:
        return {self.node_id: self._published}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._channels.clear()
        self._only.clear()
