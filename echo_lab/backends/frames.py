"""JSON frames of the echo_lab WebSocket protocol: the encoding shared by the ``ws://`` client
(:mod:`echo_lab.backends.websocket`) and the broker (:mod:`echo_lab.broker`).

Entry field values travel as text; bytes that are not UTF-8 travel as ``{"b64": "…"}``.
Both sides write frames with :func:`send_now` where they can (no trip through the loop).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
from websockets.protocol import State

__all__ = ["dumps", "fields_from_wire", "send_now"]

_OPEN = State.OPEN


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} in a frame")


def dumps(frame: Any) -> bytes:
    """Encode a frame as UTF-8 JSON; ``bytes`` field values become text (or ``{"b64": …}``
    when they are not UTF-8)."""
    return orjson.dumps(frame, default=_default)


def fields_from_wire(fields: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`dumps`' encoding of one entry's fields (``{"b64": …}`` -> bytes)."""
    for key, value in fields.items():
        if type(value) is dict:
            fields[key] = base64.b64decode(value["b64"])
    return fields


def send_now(ws: Any, data: bytes, limit: int = 0) -> bool:
    """Write ``data`` as one text frame on the websockets connection ``ws`` right away, when
    it is open and at most ``limit`` bytes wait in its write buffer; ``False`` otherwise
    (then ``await ws.send(data, text=True)``, which waits for room or raises
    ``ConnectionClosed``).

    This is what ``websockets.broadcast`` does for each connection: the frame goes to the
    socket in this call (asyncio sockets have TCP_NODELAY), without ``send()``'s context
    manager and its await, so a caller in a callback needs no task. A frame is never split:
    nothing else of ours sends fragmented messages.
    """
    if ws.protocol.state is not _OPEN or ws.transport.get_write_buffer_size() > limit:
        return False
    ws.protocol.send_text(data)
    ws.send_data()
    return True
