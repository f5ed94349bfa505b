"""Wire formats: how a message becomes stored fields and how stored fields become envelopes.

Writing is done by one codec per stream (``"json"`` by default, ``"echo"`` for Crystal
Echo's format). Reading is tolerant and codec-independent: every stored entry is decoded by
:func:`decode`, which understands echo_lab's own fields, Crystal Echo's ``payload`` field and
any flat fields another program wrote.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import DecodeError, EncodeError
from .message import Envelope, Message, message_type

__all__ = [
    "CODECS",
    "Fields",
    "decode",
    "decode_many",
    "encode_echo",
    "encode_json",
    "encode_many",
    "get_codec",
    "to_json",
]

#: Stored fields of one entry: str keys, bytes or str values (flat, like a Redis entry).
Fields = Mapping[str, bytes | str]

#: An encoder turns (topic, data, headers) into stored fields.
Encoder = Callable[[str, Any, "Mapping[str, str] | None"], dict[str, bytes]]

_OURS = frozenset(("data", "type", "headers"))
_dumps = orjson.dumps
_loads = orjson.loads
_OPT = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def to_json(value: Any, option: int = _OPT) -> bytes:
    """Compact JSON of ``value`` as bytes: ``orjson.dumps``, right-sized.

    orjson returns a small result in a 4 KiB buffer, which a retained log or capture would
    keep for every message (and allocating one per message makes the allocator fault pages
    in). Joining it with ``b""`` copies it to its own size.
    """
    return _join((_dumps(value, option=option), b""))


_join = b"".join


def _dump(topic: str, value: Any) -> bytes:
    try:
        return to_json(value)
    except TypeError as exc:
        raise EncodeError(
            f"cannot publish to {topic!r}: {exc} (messages must be JSON-serialisable: "
            "dicts of str/int/float/bool/None/list/dict/datetime, or Message dataclasses)"
        ) from None


def _check(topic: str, data: Any, headers: Mapping[str, str] | None) -> None:
    if not isinstance(data, dict | Message):
        raise EncodeError(
            f"cannot publish to {topic!r}: expected a dict or a Message instance, "
            f"got {type(data).__name__}"
        )
    if headers and not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise EncodeError(f"cannot publish to {topic!r}: headers must map str to str")


def encode_json(
    topic: str, data: Any, headers: Mapping[str, str] | None = None
) -> dict[str, bytes]:
    """Encode as echo_lab's JSON fields: ``data`` (JSON), ``type`` and ``headers`` if any."""
    if type(data) is dict and not headers:  # the hot path: a plain dict, no headers
        try:
            return {"data": _join((_dumps(data, option=_OPT), b""))}
        except TypeError:
            pass  # _dump below names the problem
    _check(topic, data, headers)
    fields = {"data": _dump(topic, data)}
    if isinstance(data, Message):
        fields["type"] = data.type_name.encode()
    if headers:
        fields["headers"] = _dump(topic, headers)
    return fields


def encode_echo(
    topic: str, data: Any, headers: Mapping[str, str] | None = None
) -> dict[str, bytes]:
    """Encode as Crystal Echo v0.1.1 does: one field ``payload`` holding URL-safe base64
    (padded) of compact JSON ``{"_id": uuid4, "_time": RFC 3339 seconds, ...fields}``.

    Headers are carried as ``_headers`` (Echo ignores unknown keys).
    """
    _check(topic, data, headers)
    body = {
        "_id": str(uuid.uuid4()),
        "_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    body.update(_loads(_dump(topic, data)))
    if headers:
        body["_headers"] = dict(headers)
    return {"payload": base64.urlsafe_b64encode(_dump(topic, body))}


def encode_many(
    encoder: Encoder, topic: str, rows: Iterable[Any], headers: Mapping[str, str] | None
) -> list[dict[str, bytes]]:
    """Encode rows for one topic (plain dicts take a one-pass fast path with the JSON codec)."""
    rows = list(rows)
    if encoder is encode_json and not headers:
        try:
            join, dumps, opt = _join, _dumps, _OPT
            return [
                {"data": join((dumps(row, option=opt), b""))}
                if type(row) is dict
                else encode_json(topic, row)
                for row in rows
            ]
        except TypeError:
            pass  # encode one by one below, so the error names the problem
    return [encoder(topic, row, headers) for row in rows]


CODECS: dict[str, Encoder] = {"json": encode_json, "echo": encode_echo}


def get_codec(name: str) -> Encoder:
    """Return the encoder called ``name``.

    Raises:
        ValueError: naming the unknown codec and the known ones.
    """
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r}: choose one of {sorted(CODECS)}") from None


def _text(value: bytes | str) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


def _typed(type_name: str | None, data: Any) -> Any:
    if type_name is None:
        return data
    cls = message_type(type_name)
    if cls is not None and isinstance(data, dict):
        try:
            return cls(**data)
        except TypeError:
            return data  # the schema changed since it was written: keep the dict
    return data


def decode(topic: str, id: str, fields: Fields) -> Envelope:
    """Decode one stored entry into an :class:`Envelope`, whatever wrote it.

    Raises:
        DecodeError: naming the topic, id and problem, when the entry is malformed.
    """
    try:
        raw = fields.get("data")
        if raw is not None and len(fields) == 1:  # the common case: a plain dict
            return Envelope(topic, id, None, _loads(raw), None, len(raw))
        if raw is not None and fields.keys() <= _OURS:
            type_name = fields.get("type")
            if type_name is not None:
                type_name = _text(type_name)
            headers = fields.get("headers")
            return Envelope(
                topic,
                id,
                type_name,
                _typed(type_name, _loads(raw)),
                _loads(headers) if headers is not None else None,
                len(raw),
            )
        payload = fields.get("payload")
        if payload is not None and len(fields) == 1:
            return _decode_echo(topic, id, payload)
        data = {_text(k): _text(v) for k, v in fields.items()}
        return Envelope(topic, id, None, data, None, sum(len(v) for v in fields.values()))
    except (orjson.JSONDecodeError, UnicodeDecodeError, binascii.Error, AttributeError) as exc:
        raise DecodeError(f"undecodable entry {id} on topic {topic!r}: {exc}") from None


def decode_many(
    topic: str, entries: Iterable[Sequence[Any]]
) -> tuple[list[Envelope], list[tuple[str, Fields, str]]]:
    """Decode a batch of ``(id, fields, ...)`` entries of one topic.

    Returns the envelopes and, separately, the undecodable entries as ``(id, fields, error)``.
    Plain dicts (the common case) take a fast path without a call per entry.
    """
    out: list[Envelope] = []
    bad: list[tuple[str, Fields, str]] = []
    append, loads, envelope = out.append, _loads, Envelope
    for entry in entries:
        id_, fields = entry[0], entry[1]
        raw = fields.get("data")
        if raw is not None and len(fields) == 1:
            try:
                append(envelope(topic, id_, None, loads(raw), None, len(raw)))
                continue
            except orjson.JSONDecodeError:
                pass  # decode() below names the problem
        try:
            append(decode(topic, id_, fields))
        except DecodeError as exc:
            bad.append((id_, fields, str(exc)))
    return out, bad


_B64_STD = bytes.maketrans(b"-_", b"+/")


def _decode_echo(topic: str, id: str, payload: bytes | str) -> Envelope:
    if isinstance(payload, str):
        payload = payload.encode()
    # Echo writes the URL-safe alphabet; accept the standard one and line breaks too.
    body = _loads(base64.b64decode(payload.translate(_B64_STD).translate(None, b"\r\n")))
    if not isinstance(body, dict):
        raise DecodeError(
            f"undecodable entry {id} on topic {topic!r}: Echo payload is not an object"
        )
    body.pop("_id", None)
    body.pop("_time", None)
    headers = body.pop("_headers", None)
    type_name = topic.rpartition(":")[2] or topic
    return Envelope(topic, id, type_name, _typed(type_name, body), headers, len(payload))


def dead_letter_fields(
    fields: Fields, error: str, source_id: str, deliveries: int
) -> dict[str, Any]:
    """Fields of a dead-letter copy: the original entry plus the error and where it came from.

    For echo_lab's own entries the details go into ``headers`` (so the copy still decodes
    to the original message); for anything else they are added as flat fields.
    """
    details = {"error": error, "source_id": source_id, "deliveries": str(deliveries)}
    out: dict[str, Any] = dict(fields)
    if "data" in fields and fields.keys() <= _OURS:
        try:
            _loads(fields["data"])
            headers = _loads(fields["headers"]) if "headers" in fields else {}
            headers.update(details)
            out["headers"] = to_json(headers, 0)
            return out
        except (orjson.JSONDecodeError, AttributeError):
            pass  # undecodable: keep it raw, details as flat fields
    for k, v in details.items():
        out[f"dead.{k}"] = v
    return out
