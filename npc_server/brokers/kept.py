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
    """The room talk this node kept local in the last `KEEP_FOR` seconds, oldest first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: deque[tuple[float, str, ServerFrame, str | None]] = deque()

    def keep_nowait(self, channel: str, frame: ServerFrame, exclude: str | None) -> None:
        """A frame on an alone channel that was not published; kept if it is room talk."""
        if type(frame) not in KEPT_TYPES or not channel.startswith(ROOM_PREFIX):
            return
        now = self._clock()
        self._expire(now)
        if len(self._kept) >= MAX_KEPT:
            self._kept.popleft()
        self._kept.append((now, channel, frame, exclude))

    def take(self, channel: str) -> list[tuple[ServerFrame, str | None]]:
        """Another node listens on `channel` now: what was kept there, in order, once."""
        self._expire(self._clock())
        if not any(c == channel for _, c, _, _ in self._kept):
            return []
        taken = [(f, x) for _, c, f, x in self._kept if c == channel]
        self._kept = deque(k for k in self._kept if k[1] != channel)
        return taken

    def __len__(self) -> int:
        return len(self._kept)

    def _expire(self, now: float) -> None:
        kept = self._kept
        while kept and kept[0][0] < now - KEEP_FOR:
            kept.popleft()
