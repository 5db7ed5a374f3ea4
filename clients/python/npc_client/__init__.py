"""npc_client: an asyncio client for the NPC realtime protocol (v1).

async with await connect("ws://127.0.0.1:8700/ws", token) as npc:
    turn = await npc.say("merchant", "What do you sell?")
    async for item in turn:
        print(item, end="", flush=True)
"""

from npc_client.client import (
    VERSION,
    ClientStatistics,
    NpcClient,
    ServerInfo,
    TokenProvider,
    ToolHandler,
    connect,
)
from npc_client.connection import Backoff, ConnectionState
from npc_client.errors import (
    BackendError,
    BadFrame,
    BadToken,
    Busy,
    CloseCode,
    ConnectionClosedError,
    ErrorCode,
    Forbidden,
    NotInRoom,
    NpcClientError,
    NpcError,
    ProtocolError,
    RateLimited,
    RequestLost,
    ServerUnreachable,
    TooLong,
    Unavailable,
    UnknownAction,
    UnknownCall,
    UnknownNpc,
    UnknownTurn,
    UnknownType,
)
from npc_client.events import (
    Draining,
    Event,
    Members,
    Presence,
    RoomGap,
    Said,
    ServerNotice,
    Typing,
)
from npc_client.turns import Action, Text, ToolCall, Turn

__version__ = VERSION

__all__ = [
    "Action",
    "BackendError",
    "Backoff",
    "BadFrame",
    "BadToken",
    "Busy",
    "ClientStatistics",
    "CloseCode",
    "ConnectionClosedError",
    "ConnectionState",
    "Draining",
    "ErrorCode",
    "Event",
    "Forbidden",
    "Members",
    "NotInRoom",
    "NpcClient",
    "NpcClientError",
    "NpcError",
    "Presence",
    "ProtocolError",
    "RateLimited",
    "RequestLost",
    "RoomGap",
    "Said",
    "ServerInfo",
    "ServerNotice",
    "ServerUnreachable",
    "Text",
    "TokenProvider",
    "TooLong",
    "ToolCall",
    "ToolHandler",
    "Turn",
    "Typing",
    "Unavailable",
    "UnknownAction",
    "UnknownCall",
    "UnknownNpc",
    "UnknownTurn",
    "UnknownType",
    "__version__",
    "connect",
]
