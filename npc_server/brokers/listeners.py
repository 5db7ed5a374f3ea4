"""Where another node listens: which of a node's channels it may keep off Redis.

`PUBLISH` answers with the number of connections that received it. When that
is 1 on a channel this node subscribes (its own subscription, confirmed by
Redis before the publication was sent), no other node listens there, and the
channel is "alone": its frames stay on this node until another node announces
interest. A node announces interest on each channel as soon as Redis confirms
its subscription, before anything that waits for that subscription is sent.

Sans-I/O: the Redis broker feeds it what it sends, hears and is told, and asks
it which channels to announce and which to keep local. An answer sent before
an announcement was heard proves nothing (`heard`); nor, for `RELEARN_AFTER`
after a lost link, does any answer, while the other nodes resubscribe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

RELEARN_AFTER = 10.0  # seconds after a lost link with nothing learnt alone


class Listeners:
    """One node's view of which of its channels other nodes subscribe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.alone: set[str] = set()  # read on every publication: a plain set
        self._live: set[str] = set()  # subscribed, and Redis confirmed it
        self._unconfirmed: dict[str, int] = {}  # subscribed -> the version that does it
        self.heard = 0  # announcements heard (and link changes) so far
        self._learn_from = 0.0
        self._lost_link = False

    def subscribed(self, channel: str, version: int) -> None:
        """This node subscribes `channel` from subscription version `version` on."""
        self._unconfirmed[channel] = version

    def unsubscribed(self, channel: str) -> None:
        self._unconfirmed.pop(channel, None)
        self._live.discard(channel)
        self.alone.discard(channel)

    def confirmed(self, version: int) -> list[str]:
        """Redis applied subscriptions up to `version`: the channels to announce now."""
        ready = [c for c, v in self._unconfirmed.items() if v <= version]
        for channel in ready:
            del self._unconfirmed[channel]
            self._live.add(channel)
            self.alone.discard(channel)
        return ready

    def new_connection(self, version: int) -> None:
        """A new subscription connection: what the old one had must be confirmed again."""
        for channel in self._live:
            self._unconfirmed[channel] = version
        self._live.clear()
        self._relearn()

    def link_changed(self, connected: bool) -> list[str]:
        """Forget what was learnt; back on the link, the channels to announce again (an
        announcement of this node's may have been lost)."""
        self.alone.clear()
        self.heard += 1
        self._lost_link = self._lost_link or not connected
        self._relearn()
        return sorted(self._live) if connected else []

    def interest(self, channel: str) -> None:
        """Another node announced that it subscribes `channel`."""
        self.heard += 1
        self.alone.discard(channel)

    def answered(self, channels: Iterable[str], receivers: Iterable[object], heard: int) -> None:
        """The answers to publications sent when `heard` was the count: each channel whose
        publication reached only this node's own subscription is alone."""
        if heard != self.heard or self._clock() < self._learn_from:
            return
        live = self._live
        for channel, count in zip(channels, receivers, strict=True):
            if count == 1 and channel in live:
                self.alone.add(channel)

    def _relearn(self) -> None:
        # Not at start-up: the other nodes' subscriptions are in Redis already.
        if self._lost_link:
            self._learn_from = self._clock() + RELEARN_AFTER
