"""Client of the echo_lab WebSocket broker (``ws://host:port[/path]``, ``wss://…``).

One WebSocket connection per backend carries every request, publish and subscription
(protocol: ``docs/protocol.md``). Fan-out cursors are pushed by the broker within a credit
window (the client's buffer is bounded); group cursors pull, so a member only holds what it
asked for. On a lost connection the client reconnects with backoff and resubscribes every
cursor from the last id it received; in-flight requests are retried, so publishing and group
delivery are at-least-once across a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import Frame
from websockets.frames import Opcode as _Opcode

from ..codec import Fields
from ..errors import BackendConnectionError, EchoLabError, GroupError
from ..ids import MAX_SEQ, Position, parse_id
from .base import Backend, Cursor, GroupCursor, GroupEntry, RawEntry
from .frames import dumps, fields_from_wire, send_now

__all__ = ["AuthenticationError", "BrokerError", "WebSocketBackend"]

logger = logging.getLogger("echo_lab.websocket")

OP_TEXT = _Opcode.TEXT
_PAGE = 5000  # history entries per request

_OPTIONS = ("token", "connect_timeout", "reconnect_timeout", "credit", "max_frame")


class AuthenticationError(BackendConnectionError, PermissionError):
    """The broker refused the token (or needs one); the message gives the broker's reason."""


class BrokerError(EchoLabError, RuntimeError):
    """The broker refused a request; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RequestError(BrokerError, ValueError):
    """The broker found a request invalid (bad field, bad JSON, unknown operation)."""


class _Lost(Exception):
    """The connection dropped before the reply came (the request is retried)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"connection lost ({code} {reason})")
        self.code = code
        self.reason = reason


def _error(code: str, message: str) -> Exception:
    if code == "group":
        return GroupError(message)
    if code == "backend":
        return BackendConnectionError(message)
    if code == "unauthorized":
        return AuthenticationError(message)
    if code in ("bad_field", "bad_json", "bad_frame", "unknown_op"):
        return RequestError(code, message)
    return BrokerError(code, message)


class WebSocketBackend(Backend):
    """Talks to an echo_lab broker over one WebSocket (see ``docs/protocol.md``).

    Options: ``token`` (also accepted as ``?token=`` in the URL), ``connect_timeout``
    (seconds, default 5), ``reconnect_timeout`` (how long to keep retrying after a lost
    connection, default 30), ``credit`` (fan-out window per cursor, default 2048 entries),
    ``max_frame`` (largest incoming frame, bytes).
    """

    schemes = ("ws", "wss")

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        connect_timeout: float = 5.0,
        reconnect_timeout: float = 30.0,
        credit: int = 2048,
        max_frame: int = 64 << 20,
    ) -> None:
        parts = urlsplit(url)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "wss" else 80)
        self._path = parts.path or ""
        self._token = token
        self.connect_timeout = float(connect_timeout)
        self.reconnect_timeout = float(reconnect_timeout)
        self.credit = int(credit)
        self.max_frame = int(max_frame)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"{self._scheme}://{host}:{self._port}{self._path}"
        self._ws: ClientConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the connection's, once open
        self._reader: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._subs: dict[int, _WSCursor | _WSGroupCursor] = {}
        self._rids = itertools.count(1)
        self._sub_ids = itertools.count(1)
        self._connected_once = False
        self._closed = False
        self._max_frame_out = (1 << 20) - 4096  # the broker's max_frame, less room for framing
        #: How many times the connection was re-established after being lost.
        self.reconnects = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> WebSocketBackend:
        """Build from ``ws://host:port[/path][?token=T]`` and the options above.

        Raises:
            ValueError: naming a malformed URL or an unknown option.
        """
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown option(s) for {url.partition('://')[0]}://: "
                f"{', '.join(sorted(unknown))} (known: {', '.join(_OPTIONS)})"
            )
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in cls.schemes or not parts.hostname or port == -1 or parts.fragment:
            raise ValueError(
                f"malformed WebSocket URL {url!r}: expected ws://host:port[/path] or "
                "wss://host:port[/path]"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"token"}:
            raise ValueError(
                f"malformed WebSocket URL {url!r}: unknown query parameter(s) "
                f"{', '.join(sorted(set(query) - {'token'}))}"
            )
        if "token" in query and "token" not in options:
            options["token"] = query["token"][0]
        for name in ("connect_timeout", "reconnect_timeout", "credit", "max_frame"):
            value = options.get(name)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"option {name} must be a positive number, got {value!r}")
        clean = parts._replace(query="").geturl()
        return cls(clean, **options)

    @property
    def url(self) -> str:
        """``ws://host:port[/path]`` (never the token)."""
        return self._url

    def __repr__(self) -> str:
        return f"<WebSocketBackend {self._url}>"

    # -- connection ---------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and authenticate; raise ``BackendConnectionError`` naming host and port."""
        await self._ready(retry=False)

    def _where(self) -> str:
        return f"the echo_lab broker at {self._host}:{self._port}"

    async def _open(self) -> None:
        """Open a connection, say hello, start the reader and resubscribe every cursor."""
        try:
            ws = await ws_connect(
                self._url,
                create_connection=_Connection,
                compression=None,
                max_size=self.max_frame,
                open_timeout=self.connect_timeout,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise BackendConnectionError(
                f"cannot connect to {self._where()} ({self._url}): {exc or type(exc).__name__}"
            ) from None
        try:
            await ws.send(dumps({"op": "hello", "rid": 0, "token": self._token}), text=True)
            async with asyncio.timeout(self.connect_timeout):
                reply = orjson.loads(await ws.recv(decode=False))
        except ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd else "connection closed"
            if exc.rcvd and exc.rcvd.code == 4001:
                raise AuthenticationError(f"{self._where()} refused the token: {reason}") from None
            raise BackendConnectionError(
                f"{self._where()} closed the connection: {reason}"
            ) from None
        except TimeoutError:
            await ws.close()
            raise BackendConnectionError(f"{self._where()} did not answer hello") from None
        if reply.get("op") != "ok":
            await ws.close()
            raise _error(reply.get("code", "internal"), reply.get("message", str(reply)))
        limits = (reply.get("result") or {}).get("limits") or {}
        if isinstance(limits.get("max_frame"), int):
            self._max_frame_out = max(limits["max_frame"] - 4096, 1024)
        self._ws = ws
        self._loop = ws.loop
        ws.on_frame = self._on_frame  # type: ignore[attr-defined]
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(ws))
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        for cursor in list(self._subs.values()):
            await cursor._subscribe()

    async def _ready(self, retry: bool = True) -> ClientConnection:
        """The open connection, (re)connecting with backoff if needed."""
        if self._closed:
            raise RuntimeError(f"{self._url} backend is closed")
        ws = self._ws
        if ws is not None:
            return ws
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            deadline = time.monotonic() + self.reconnect_timeout
            delay = 0.05
            while self._ws is None:
                if self._closed:
                    raise RuntimeError(f"{self._url} backend is closed")
                try:
                    await self._open()
                except AuthenticationError:
                    raise
                except BackendConnectionError:
                    if not (retry and self._connected_once) or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            return self._ws

    def _on_frame(self, data: bytes) -> None:
        """Handle one frame from the broker (called as it is parsed: no task hop)."""
        msg = orjson.loads(data)
        op = msg.get("op")
        subs = self._subs
        if op == "deliver":
            cursor = subs.get(msg["sub"])
            if cursor is not None:
                entries = msg["entries"]
                if b'{"b64":' in data:
                    for entry in entries:
                        fields_from_wire(entry[1])
                cursor._deliver(entries)
            return
        fut = self._pending.pop(msg.get("rid"), None)  # type: ignore[arg-type]
        if op == "ok":
            if fut is not None and not fut.done():
                result = msg.get("result")
                if "sub" in msg and b'{"b64":' in data and isinstance(result, list):
                    for entry in result:
                        fields_from_wire(entry[1])
                fut.set_result(result)
        elif op == "error":
            exc = _error(msg.get("code", "internal"), msg.get("message", ""))
            if fut is not None:
                if not fut.done():
                    fut.set_exception(exc)
            elif msg.get("sub") in subs:
                subs[msg["sub"]]._fail(exc)
            else:
                logger.debug("broker error: %s", msg)

    async def _read_loop(self, ws: ClientConnection) -> None:
        """Frames not handled as they arrive (fragmented ones) land here; and the end."""
        try:
            while True:
                self._on_frame(await ws.recv(decode=False))  # type: ignore[arg-type]
        except ConnectionClosed:
            pass
        except Exception:  # pragma: no cover - a broken frame from the broker
            logger.exception("reading from %s failed", self._url)
        finally:
            self._lost(ws)

    def _lost(self, ws: ClientConnection) -> None:
        """The connection ended: fail in-flight requests (they retry) and reconnect."""
        if self._ws is not ws:
            return
        self._ws = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(_Lost(*self._close_info(ws)))
        if not self._closed:
            logger.warning("lost the connection to %s; reconnecting", self._where())
            if self._subs and (self._reconnector is None or self._reconnector.done()):
                self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    @staticmethod
    def _close_info(ws: ClientConnection) -> tuple[int | None, str]:
        rcvd = ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")

    async def _reconnect(self) -> None:
        while not self._closed and self._subs:
            try:
                await self._ready()
                return
            except AuthenticationError as exc:
                for cursor in list(self._subs.values()):
                    cursor._fail(exc)
                return
            except (BackendConnectionError, OSError) as exc:
                for cursor in list(self._subs.values()):
                    cursor._fail(exc)
                await asyncio.sleep(1.0)

    # -- requests -----------------------------------------------------------------------------
    async def _start(
        self, frame: dict[str, Any], body: bytes | None = None
    ) -> asyncio.Future[Any]:
        """Send a request (``body``: the frame already encoded, without its rid); return the
        future of its reply (it fails with ``_Lost`` if the connection drops)."""
        while True:
            ws = self._ws or await self._ready()
            rid = next(self._rids)
            if body is None:
                frame["rid"] = rid
                data = dumps(frame)
            else:
                data = b'%s,"rid":%d}' % (body[:-1], rid)
            fut = ws.loop.create_future()  # (get_running_loop() is a getpid() call on 3.11)
            self._pending[rid] = fut
            if send_now(ws, data):  # nothing queued before it: written in this call
                return fut
            try:
                await ws.send(data, text=True)
            except ConnectionClosed:
                self._pending.pop(rid, None)
                self._lost(ws)
                continue
            return fut

    async def _call(self, frame: dict[str, Any], body: bytes | None = None) -> Any:
        """Send a request and return its result, retrying across reconnections (a request
        that keeps killing the connection is given up after a few attempts)."""
        for attempt in range(1, 6):
            fut = await self._start(frame, body)
            try:
                return await fut
            except _Lost as lost:
                if lost.code == 1009:
                    raise ValueError(
                        f"{self._where()} refused a {frame['op']} frame as too large "
                        f"({lost.reason or 'message too big'})"
                    ) from None
                if attempt == 5:
                    raise BackendConnectionError(
                        f"{self._where()} dropped the connection during {frame['op']} "
                        f"{attempt} times ({lost.code} {lost.reason})"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, frame: dict[str, Any]) -> None:
        """Send a frame that needs no reply, if connected (else drop it)."""
        ws = self._ws
        if ws is not None:
            data = dumps(frame)
            if not send_now(ws, data):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(data, text=True)

    # -- Backend API ----------------------------------------------------------------------------
    async def append(self, topic: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        ids: list[str] = []
        step, i, limit = 5000, 0, self._max_frame_out
        while i < len(entries):
            chunk = entries[i : i + step]
            if len(chunk) == 1:
                frame = {"op": "publish", "topic": topic, "fields": chunk[0], "maxlen": maxlen}
            else:
                frame = {"op": "publish", "topic": topic, "entries": chunk, "maxlen": maxlen}
            body = dumps(frame)
            if len(body) > limit:
                if len(chunk) == 1:
                    raise ValueError(
                        f"cannot publish to {topic!r}: a message of {len(body)} bytes is larger "
                        f"than the broker's max_frame ({limit + 4096} bytes)"
                    )
                step = max(1, len(chunk) * limit // len(body))  # big entries: smaller batches
                continue
            ids += await self._call(frame, body)
            i += len(chunk)
        return ids

    async def _register(self, cursor: _WSCursor | _WSGroupCursor) -> None:
        """Subscribe ``cursor`` on the broker; forget it again if that fails."""
        self._subs[cursor.sub] = cursor
        try:
            await cursor._subscribe()
        except BaseException:
            self._subs.pop(cursor.sub, None)
            raise

    async def cursor(self, topic: str, start: Position) -> Cursor:
        cursor = _WSCursor(self, topic, start, next(self._sub_ids))
        await self._register(cursor)
        return cursor

    async def group_cursor(
        self, topic: str, group: str, consumer: str, start: Position, claim_idle: float
    ) -> GroupCursor:
        cursor = _WSGroupCursor(self, topic, group, consumer, start, claim_idle)
        cursor.sub = next(self._sub_ids)
        await self._register(cursor)
        cursor._start = "0"  # a re-created group (broker restart) re-reads what is retained
        return cursor

    async def range(
        self,
        topic: str,
        start: str = "-",
        end: str = "+",
        count: int | None = None,
        *,
        reverse: bool = False,
    ) -> list[RawEntry]:
        out: list[RawEntry] = []
        while count is None or len(out) < count:  # in pages, so no frame gets huge
            page = _PAGE if count is None else min(_PAGE, count - len(out))
            frame = {"op": "history", "topic": topic, "start": start, "end": end}
            frame["count"] = page
            if reverse:
                frame["reverse"] = True
            result = await self._call(frame)
            out += [(e[0], e[1]) for e in result]
            if len(result) < page:
                break
            ms, seq = parse_id(result[-1][0])
            if not reverse:
                start = f"{ms}-{seq + 1}"
            elif seq:
                end = f"{ms}-{seq - 1}"
            elif ms:
                end = f"{ms - 1}-{MAX_SEQ}"
            else:
                break  # reached id 0-0
        return out

    async def topics(self) -> list[str]:
        return await self._call({"op": "topics"})

    async def info(self, topic: str) -> dict[str, Any]:
        return await self._call({"op": "info", "topic": topic})

    async def groups(self, topic: str) -> list[dict[str, Any]]:
        return await self._call({"op": "groups", "topic": topic})

    async def pending(self, topic: str, group: str) -> list[dict[str, Any]]:
        return await self._call({"op": "pending", "topic": topic, "group": group})

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        return await self._call({"op": "ack", "topic": topic, "group": group, "ids": list(ids)})

    async def claim(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        frame = {"op": "claim", "topic": topic, "group": group, "consumer": consumer}
        frame["ids"] = list(ids)
        return await self._call(frame)

    async def delete(self, topic: str) -> None:
        await self._call({"op": "delete", "topic": topic})

    async def close(self) -> None:
        """Close the connection and wake every waiting cursor (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for cursor in list(self._subs.values()):
            cursor._wake()
        self._subs.clear()
        if self._reconnector is not None:
            self._reconnector.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"{self._url} backend is closed"))
        self._pending.clear()


class _Connection(ClientConnection):
    """A client connection that hands complete text frames to ``on_frame`` as soon as they
    are parsed, instead of queueing them for a reader task (one loop iteration less)."""

    on_frame: Callable[[bytes], None] | None = None

    def process_event(self, event: Any) -> None:
        handler = self.on_frame
        if handler is not None and type(event) is Frame and event.opcode is OP_TEXT and event.fin:
            try:
                handler(event.data)
                return
            except Exception:  # pragma: no cover - a broken frame: let recv() raise it
                logger.exception("bad frame from the broker")
        super().process_event(event)


def _position(start: Position) -> str:
    return start.isoformat() if isinstance(start, datetime) else start


class _BrokerSub:
    """What both cursor kinds share: a subscription on the broker, numbered ``sub``."""

    _backend: WebSocketBackend
    sub: int
    _closed: bool

    def _wake(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self._backend._subs.pop(self.sub, None) is not None:
            await self._backend._send({"op": "unsubscribe", "sub": self.sub})


class _WSCursor(_BrokerSub, Cursor):
    """A fan-out cursor: the broker pushes batches within a credit window."""

    def __init__(self, backend: WebSocketBackend, topic: str, start: Position, sub: int) -> None:
        self._backend = backend
        self.topic = topic
        self.sub = sub
        self._start: Position = start
        self.last_id = "0-0"
        self._received: str | None = None  # last id received (buffered or returned)
        self._buf: deque[list[Any]] = deque()
        self._buffered = 0
        self._consumed = 0  # returned since the last credit grant
        self._window = backend.credit
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._resubscribe = False
        self._closed = False

    async def _subscribe(self) -> None:
        start = self._received or _position(self._start)
        credit = max(self._window - self._buffered, 0)
        frame = {"op": "subscribe", "sub": self.sub, "topic": self.topic, "start": start}
        frame["credit"] = credit
        result = await self._backend._call(frame)
        if self._received is None:
            self.last_id = self._received = result["last_id"]
        self._consumed = 0
        self._resubscribe = False

    def _deliver(self, entries: list[list[Any]]) -> None:
        self._buf.append(entries)
        self._buffered += len(entries)
        self._received = entries[-1][0]
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self._resubscribe = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self, count: int) -> list[RawEntry]:
        buf = self._buf
        first = buf[0]
        if len(first) <= count:
            buf.popleft()
            out = first
            while buf and len(out) + len(buf[0]) <= count:
                out = out + buf.popleft()
        else:
            out, buf[0] = first[:count], first[count:]
        self._buffered -= len(out)
        self._consumed += len(out)
        self.last_id = out[-1][0]
        return list(map(tuple, out))  # type: ignore[arg-type]

    async def read(self, count: int, timeout: float | None) -> list[RawEntry]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buf:
            if self._closed or self._backend._closed:
                return []
            if self._error is not None:
                exc, self._error = self._error, None
                raise exc
            if self._resubscribe and self._backend._ws is not None:
                await self._subscribe()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            loop = self._backend._loop or asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            try:
                if remaining is None:
                    await waiter
                else:
                    async with asyncio.timeout(remaining):
                        await waiter
            except TimeoutError:
                return []
            finally:
                self._waiter = None
        out = self._take(count)
        if self._consumed >= self._window // 2:
            grant, self._consumed = self._consumed, 0
            await self._backend._send({"op": "credit", "sub": self.sub, "n": grant})
        return out


class _WSGroupCursor(_BrokerSub, GroupCursor):
    """A group member: each read pulls at most ``count`` entries from the broker."""

    def __init__(
        self,
        backend: WebSocketBackend,
        topic: str,
        group: str,
        consumer: str,
        start: Position,
        claim_idle: float,
    ) -> None:
        self._backend = backend
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self._start: Position = start
        self.claim_idle = claim_idle
        self._inflight: asyncio.Future[Any] | None = None
        self._closed = False
        self._subscribed = False

    async def _subscribe(self) -> None:
        frame = {
            "op": "subscribe",
            "sub": self.sub,
            "topic": self.topic,
            "start": _position(self._start),
            "group": self.group,
            "consumer": self.consumer,
            "claim_idle": self.claim_idle,
        }
        await self._backend._call(frame)
        self._subscribed = True

    def _deliver(self, entries: list[list[Any]]) -> None:  # pragma: no cover - pulled
        pass

    def _fail(self, exc: Exception) -> None:
        self._subscribed = False

    def _wake(self) -> None:
        fut = self._inflight
        if fut is not None and not fut.done():
            fut.set_result([])

    async def read(self, count: int, timeout: float | None) -> list[GroupEntry]:
        backend = self._backend
        while not self._closed:
            if self._inflight is None:
                if not self._subscribed:
                    await backend._ready()
                    if not self._subscribed:
                        await self._subscribe()
                frame = {"op": "pull", "sub": self.sub, "count": count, "timeout": timeout}
                self._inflight = await backend._start(frame)
            fut = self._inflight
            try:
                if timeout is None:
                    result = await asyncio.shield(fut)
                else:
                    async with asyncio.timeout(timeout + 5.0):
                        result = await asyncio.shield(fut)
            except TimeoutError:
                return []  # keep the pull: its entries come with the next read
            except _Lost:
                self._inflight = None
                continue
            except BaseException:
                if fut.done():
                    self._inflight = None
                raise
            self._inflight = None
            return list(map(tuple, result))  # type: ignore[arg-type]
        return []

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            await self._backend._send({"op": "ack", "sub": self.sub, "ids": list(ids)})
