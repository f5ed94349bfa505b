"""JSON frames of the echo_lab WebSocket protocol: the encoding shared by the ``ws://`` client
(:mod:`echo_lab.backends.websocket`) and the broker (:mod:`echo_lab.broker`).

Entry field values travel as text; bytes that are not UTF-8 travel as ``{"b64": "…"}``.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson

__all__ = ["dumps", "fields_from_wire"]


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
