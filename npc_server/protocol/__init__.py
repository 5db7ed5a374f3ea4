"""Protocol v1 core, sans I/O: no asyncio, no Quart. Bytes in, frames out."""

from npc_server.protocol.codec import FrameError, decode_client_frame, encode_server_frame
from npc_server.protocol.codes import CloseCode, ErrorCode, should_reconnect
from npc_server.protocol.connection import (
    CloseConnection,
    ConnectionState,
    FrameReceived,
    SendError,
    ServerConnection,
)

__all__ = [
    "CloseCode",
    "CloseConnection",
    "ConnectionState",
    "ErrorCode",
    "FrameError",
    "FrameReceived",
    "SendError",
    "ServerConnection",
    "decode_client_frame",
    "encode_server_frame",
    "should_reconnect",
]
