"""Benchmarks of npc-server against bare Quart and websockets servers (see README.md)."""
