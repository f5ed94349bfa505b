"""The echo_lab WebSocket protocol: JSON text frames, parsed and validated in one place.

Everything a client sends goes through :func:`parse_frame`, which either returns a frame
whose fields have the documented types or raises :class:`FrameError` (with an error code and
a message naming the problem). The broker never looks at an unvalidated field. See
``docs/protocol.md`` for the protocol itself.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from ..backends.frames import dumps, fields_from_wire

__all__ = [
    "ERROR_CODES",
    "LIMITS",
    "OPS",
    "PROTOCOL_VERSION",
    "FrameError",
    "dumps",
    "fields_from_wire",
    "parse_frame",
    "parse_position",
    "plain_publish",
]

PROTOCOL_VERSION = 1

#: Hard limits of the parser (the broker may configure lower ones).
LIMITS = {
    "max_topic_len": 512,
    "max_batch": 10_000,
    "max_count": 10_000,
    "max_credit": 100_000,
    "max_name_len": 256,
}

#: Error codes of ``{"op": "error"}`` frames.
ERROR_CODES = (
    "bad_json",  # not a JSON text
    "bad_frame",  # JSON but not an object, or a binary frame
    "unknown_op",  # "op" missing or not an operation
    "bad_field",  # a field is missing, of the wrong type or out of range
    "unauthorized",  # authentication required or refused
    "limit",  # a per-connection limit was reached (subscriptions, batch size …)
    "unknown_sub",  # "sub" names no subscription of this connection
    "duplicate_sub",  # "sub" already names a subscription of this connection
    "group",  # the consumer group or its topic no longer exists
    "backend",  # the storage behind the broker failed (connection lost …)
    "internal",  # a bug in the broker; the connection survives
)


class FrameError(ValueError):
    """A frame the broker refuses: ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, rid: Any = None, sub: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rid = rid
        self.sub = sub

    def frame(self) -> dict[str, Any]:
        """The ``error`` frame sent back to the client."""
        out: dict[str, Any] = {"op": "error", "code": self.code, "message": self.message}
        if self.rid is not None:
            out["rid"] = self.rid
        if self.sub is not None:
            out["sub"] = self.sub
        return out


# -- validation helpers ---------------------------------------------------------------------
_Check = Callable[[str, Any], Any]


def _str(name: str, value: Any, *, empty: bool = False, limit: int | None = None) -> str:
    if type(value) is not str:
        raise FrameError("bad_field", f"field {name!r} must be a string")
    if not empty and not value:
        raise FrameError("bad_field", f"field {name!r} must not be empty")
    limit = limit or LIMITS["max_name_len"]
    if len(value) > limit:
        raise FrameError("bad_field", f"field {name!r} is longer than {limit} characters")
    return value


def _topic(name: str, value: Any) -> str:
    return _str(name, value, limit=LIMITS["max_topic_len"])


def _name(name: str, value: Any) -> str:
    return _str(name, value)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise FrameError("bad_field", f"field {name!r} must be an integer from {lo} to {hi}")
    return value


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if type(value) not in (int, float) or math.isnan(value) or not lo <= value <= hi:
        raise FrameError("bad_field", f"field {name!r} must be a number from {lo} to {hi}")
    return float(value)


def _flat(name: str, value: Any) -> dict[str, str]:
    """A flat map of str -> str (an entry's fields), non-empty."""
    if type(value) is not dict or not value:
        raise FrameError("bad_field", f"field {name!r} must be a non-empty object of strings")
    for key, item in value.items():
        if type(item) is not str:
            if type(item) is dict and len(item) == 1 and type(item.get("b64")) is str:
                try:
                    value[key] = base64.b64decode(item["b64"], validate=True)
                    continue
                except ValueError:
                    pass
            raise FrameError(
                "bad_field",
                f"field {name!r}: value of {key!r} must be a string (or {{'b64': …}})",
            )
    return value


def _entries(name: str, value: Any) -> list[dict[str, str]]:
    if type(value) is not list or not value:
        raise FrameError("bad_field", f"field {name!r} must be a non-empty list of objects")
    if len(value) > LIMITS["max_batch"]:
        raise FrameError("limit", f"field {name!r} holds more than {LIMITS['max_batch']} entries")
    for i, fields in enumerate(value):
        _flat(f"{name}[{i}]", fields)
    return value


def _ids(name: str, value: Any) -> list[str]:
    if type(value) is not list or len(value) > LIMITS["max_batch"]:
        raise FrameError(
            "bad_field", f"field {name!r} must be a list of at most {LIMITS['max_batch']} ids"
        )
    for item in value:
        if type(item) is not str or not _is_id(item):
            raise FrameError("bad_field", f"field {name!r}: {item!r} is not an id '<ms>-<seq>'")
    return value


def _is_id(value: str) -> bool:
    ms, sep, seq = value.partition("-")
    return ms.isdigit() and len(ms) < 20 and (not sep or (seq.isdigit() and len(seq) < 21))


def _range_bound(name: str, value: Any) -> str:
    if type(value) is not str or not (value in ("-", "+") or _is_id(value)):
        raise FrameError("bad_field", f"field {name!r} must be '-', '+' or an id '<ms>-<seq>'")
    return value


def parse_position(value: Any) -> str | datetime:
    """A start position from the wire: ``"$"``, ``"0"``, an id, or an ISO-8601 time."""
    if type(value) is not str:
        raise FrameError("bad_field", "field 'start' must be a string")
    if value in ("$", "0", "-") or _is_id(value):
        return value
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FrameError(
            "bad_field",
            f"invalid start position {value[:64]!r}: use '$', '0', an id '<ms>-<seq>' or an "
            "ISO-8601 time",
        ) from None


def _start(name: str, value: Any) -> str | datetime:
    return parse_position(value)


def _sub(name: str, value: Any) -> str | int:
    if type(value) is int and -(2**53) <= value <= 2**53:
        return value
    if type(value) is str and 0 < len(value) <= 128:
        return value
    raise FrameError("bad_field", "field 'sub' must be an integer or a short string")


def _json_object(name: str, value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise FrameError("bad_field", f"field {name!r} must be a JSON object")
    return value


def _headers(name: str, value: Any) -> dict[str, str]:
    if type(value) is not dict or not all(type(v) is str for v in value.values()):
        raise FrameError("bad_field", f"field {name!r} must be an object of strings")
    return value


def _credit(name: str, value: Any) -> int:
    return _int(name, value, 0, LIMITS["max_credit"])


def _positive_credit(name: str, value: Any) -> int:
    return _int(name, value, 1, LIMITS["max_credit"])


def _count(name: str, value: Any) -> int:
    return _int(name, value, 1, LIMITS["max_count"])


def _opt_count(name: str, value: Any) -> int | None:
    return None if value is None else _int(name, value, 0, 2**31)


def _bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise FrameError("bad_field", f"field {name!r} must be true or false")
    return value


def _maxlen(name: str, value: Any) -> int:
    return _int(name, value, 1, 2**40)


def _timeout(name: str, value: Any) -> float | None:
    return None if value is None else _number(name, value, 0, 86_400)


def _claim_idle(name: str, value: Any) -> float:
    return _number(name, value, 0, 10**9)


def _token(name: str, value: Any) -> str:
    return _str(name, value, empty=True, limit=4096)


# op -> (required fields, optional fields with defaults). Unknown extra fields are ignored
# (forward compatibility), except that "rid" must be a string or an integer.
_R = dict[str, _Check]
_O = dict[str, tuple[_Check, Any]]
OPS: dict[str, tuple[_R, _O]] = {
    "hello": ({}, {"token": (_token, None), "client": (_name, None)}),
    "ping": ({}, {}),
    "publish": (
        {"topic": _topic},
        {
            "fields": (_flat, None),
            "entries": (_entries, None),
            "data": (_json_object, None),
            "type": (_name, None),
            "headers": (_headers, None),
            "maxlen": (_maxlen, None),
        },
    ),
    "subscribe": (
        {"sub": _sub, "topic": _topic},
        {
            "start": (_start, "$"),
            "group": (_name, None),
            "consumer": (_name, None),
            "claim_idle": (_claim_idle, 30.0),
            "credit": (_credit, 1000),
        },
    ),
    "credit": ({"sub": _sub, "n": _positive_credit}, {}),
    "pull": ({"sub": _sub, "count": _count}, {"timeout": (_timeout, None)}),
    "ack": ({"ids": _ids}, {"sub": (_sub, None), "topic": (_topic, None), "group": (_name, None)}),
    "unsubscribe": ({"sub": _sub}, {}),
    "history": (
        {"topic": _topic},
        {
            "start": (_range_bound, "-"),
            "end": (_range_bound, "+"),
            "count": (_opt_count, None),
            "reverse": (_bool, False),
        },
    ),
    "topics": ({}, {}),
    "info": ({"topic": _topic}, {}),
    "groups": ({"topic": _topic}, {}),
    "pending": ({"topic": _topic, "group": _name}, {}),
    "claim": ({"topic": _topic, "group": _name, "consumer": _name, "ids": _ids}, {}),
    "delete": ({"topic": _topic}, {}),
}


_TEXT_ONLY = {str}


def _text_fields(fields: Any) -> bool:
    """A non-empty object whose values are all strings (the wire form of an entry)."""
    return type(fields) is dict and set(map(type, fields.values())) == _TEXT_ONLY


def _plain_publish(frame: dict[str, Any]) -> bool:
    """The common publish, checked in one go: a valid ``topic``, text ``fields`` or
    ``entries``, an optional valid ``maxlen`` and nothing else. Fills in the defaults and
    returns ``True``; ``False`` leaves the frame untouched for the full check (which accepts
    the same frames, and names the problem in anything else)."""
    topic, fields, entries, maxlen = (
        frame.get("topic"),
        frame.get("fields"),
        frame.get("entries"),
        frame.get("maxlen"),
    )
    if (
        type(topic) is not str
        or not 0 < len(topic) <= LIMITS["max_topic_len"]
        or (maxlen is not None and (type(maxlen) is not int or not 1 <= maxlen <= 2**40))
        or frame.get("data") is not None
        or frame.get("type") is not None
        or frame.get("headers") is not None
    ):
        return False
    if fields is not None:
        if entries is not None or not _text_fields(fields):
            return False
    elif (
        type(entries) is not list
        or not 0 < len(entries) <= LIMITS["max_batch"]
        or not all(map(_text_fields, entries))
    ):
        return False
    frame["data"] = frame["type"] = frame["headers"] = None
    frame["fields"], frame["entries"], frame["maxlen"] = fields, entries, maxlen
    return True


_PUBLISH_PREFIX = b'{"op":"publish"'


def plain_publish(data: bytes) -> dict[str, Any] | None:
    """The common case first: ``data`` (a text frame's UTF-8) parsed as :func:`parse_frame`
    would, if it is a publish frame that :func:`_plain_publish` accepts and that starts the way
    compact JSON writers start it (``{"op":"publish"``); ``None`` for anything else (then use
    :func:`parse_frame`, which also names any problem)."""
    if not data.startswith(_PUBLISH_PREFIX):
        return None
    try:
        frame = orjson.loads(data)  # invalid UTF-8 is a JSONDecodeError too
    except orjson.JSONDecodeError:
        return None
    rid = frame.get("rid")
    if (
        frame.get("op") != "publish"  # {"op":"publishX"…}, or a later duplicate "op"
        or not (
            rid is None
            or (type(rid) is int and -(2**53) <= rid <= 2**53)
            or (type(rid) is str and len(rid) <= 128)
        )
        or not _plain_publish(frame)
    ):
        return None
    frame["rid"] = rid
    return frame


def parse_frame(data: str | bytes) -> dict[str, Any]:
    """Parse and validate one client frame.

    Returns the frame as a dict with ``op``, ``rid`` (or ``None``) and every field of the
    operation (optional ones filled with their defaults).

    Raises:
        FrameError: naming the problem, with ``rid`` set when the frame carried a valid one.
    """
    if not isinstance(data, str):
        raise FrameError("bad_frame", "binary frames are not supported: send JSON text frames")
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError("bad_json", f"invalid JSON: {exc}") from None
    if type(frame) is not dict:
        raise FrameError("bad_frame", 'a frame must be a JSON object like {"op": "ping"}')
    rid = frame.get("rid")
    if rid is not None and not (
        (type(rid) is int and -(2**53) <= rid <= 2**53) or (type(rid) is str and len(rid) <= 128)
    ):
        raise FrameError("bad_field", "field 'rid' must be an integer or a short string")
    op = frame.get("op")
    spec = OPS.get(op) if type(op) is str else None
    if spec is None:
        shown = op if type(op) is str and len(op) <= 64 else type(op).__name__
        raise FrameError(
            "unknown_op", f"unknown operation {shown!r}: expected one of {', '.join(OPS)}", rid
        )
    if not (op == "publish" and _plain_publish(frame)):
        try:
            _check_fields(op, spec, frame)
        except FrameError as exc:
            exc.rid = rid
            raise
    frame["rid"] = rid
    return frame


def _check_fields(op: str, spec: tuple[_R, _O], frame: dict[str, Any]) -> None:
    """Validate the fields of ``op`` in ``frame`` and fill in the defaults of the optional ones."""
    required, optional = spec
    for name, check in required.items():
        if name not in frame:
            raise FrameError("bad_field", f"{op}: field {name!r} is missing")
        frame[name] = check(name, frame[name])
    for name, (check, default) in optional.items():
        value = frame.get(name)
        frame[name] = default if value is None else check(name, value)
    if op == "publish":
        given = [k for k in ("fields", "entries", "data") if frame[k] is not None]
        if len(given) != 1:
            raise FrameError(
                "bad_field", "publish: give exactly one of 'fields', 'entries' or 'data'"
            )
    elif op == "ack" and frame["sub"] is None and None in (frame["topic"], frame["group"]):
        raise FrameError("bad_field", "ack: give 'sub', or 'topic' and 'group'")
