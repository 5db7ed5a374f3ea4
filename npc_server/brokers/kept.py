"""Room talk a node kept local, for a node whose interest in the room it has not heard yet.

A node keeps a channel's frames off Redis while no other node listens there
(`listeners`). When another node subscribes the room, it announces its interest
as soon as Redis confirms the subscription, and this node hears that a moment
later (one trip through Redis): what it kept local in that moment would not
reach the newcomer. Turn frames are caught up from the turn's node
(`cluster/late_starts.py`); the room's talk (`said`, `typing`, `presence`) is
kept here for `KEEP_FOR` and published when interest in its room is heard.

What is published then may predate the newcomer's subscription by up to
`KEEP_FOR`: a member who has just joined can see a line said just before. It
is never delivered twice: a kept frame was never published. Only room channels:
a session's or a player's channel carries frames a handover accounts for by
their publication numbers.

Sans-I/O: the broker says what it keeps and takes what to publish.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from npc_server.protocol.frames import Presence, Said, ServerFrame, TypingNotice

KEEP_FOR = 0.5  # seconds; hearing an announcement takes one trip through Redis
MAX_KEPT = 10_000  # frames, over all channels
ROOM_PREFIX = "room:"
KEPT_TYPES = frozenset({Said, TypingNotice, Presence})


class KeptLocal:
    """The room talk this node kept local in the last `KEEP_FOR` seconds, per channel."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: dict[str, deque[tuple[float, ServerFrame, str | None]]] = {}
        self._count = 0

    def keep_nowait(self, channel: str, frame: ServerFrame, exclude: str | None) -> None:
        """A frame on an alone channel that was not published; kept if it is room talk."""
        if type(frame) not in KEPT_TYPES or not channel.startswith(ROOM_PREFIX):
            return
        now = self._clock()
        if self._count >= MAX_KEPT:
            self._sweep(now)
        kept = self._kept.get(channel)
        if kept is None:
            kept = self._kept[channel] = deque()
        elif self._count >= MAX_KEPT:
            kept.popleft()  # the channel's oldest makes room
            self._count -= 1
        if self._count < MAX_KEPT:
            kept.append((now, frame, exclude))
            self._count += 1

    def take(self, channel: str) -> list[tuple[ServerFrame, str | None]]:
        """Another node listens on `channel` now: what was kept there, in order, once."""
        kept = self._kept.pop(channel, None)
        if not kept:
            return []
        self._count -= len(kept)
        since = self._clock() - KEEP_FOR
        return [(frame, exclude) for at, frame, exclude in kept if at >= since]

    def forget(self, channel: str) -> None:
        """`channel` is no longer alone for another reason (unsubscribed): what was kept
        there must not follow frames published after it."""
        self._count -= len(self._kept.pop(channel, ()))

    def forget_all(self) -> None:
        """The link changed: every channel is published again from now on."""
        self._kept.clear()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _sweep(self, now: float) -> None:
        since = now - KEEP_FOR
        for channel in list(self._kept):
            kept = self._kept[channel]
            while kept and kept[0][0] < since:
                kept.popleft()
                self._count -= 1
            if not kept:
                del self._kept[channel]
