"""npc-server: a realtime WebSocket backend for talking NPCs."""

__version__ = "0.1.0"
