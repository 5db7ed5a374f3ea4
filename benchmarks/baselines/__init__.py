"""Bare servers measured beside npc-server in the same run.

Each speaks the same tiny contract on `/ws`: a binary message is echoed back
as it is, except `PUSH <count> <size>`, which makes the server send `count`
binary messages of `size` bytes as fast as it can, then `DONE`. Both print
`... listening on http://HOST:PORT` once they accept connections.
"""
