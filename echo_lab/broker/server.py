"""The echo_lab WebSocket broker: serves any :class:`~echo_lab.backends.Backend` to clients.

The broker adds no storage semantics of its own: ids, retention, groups, claims and
acknowledgements are the backend's (memory, or Redis for several brokers on one set of
topics). Per connection it runs one reader loop, one request lane (publishes and requests,
in order) and one task per subscription (none for a fan-out subscription on in-process
storage: the publish that feeds it delivers); deliveries are batched into one frame per
backend read. Limits: token auth, a maximum frame size, error frames for bad frames (too many close
the connection), a bounded send queue (a client that stops reading is disconnected), and a
maximum number of subscriptions per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Coroutine, Generator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from ..backends import Backend, backend_from_url
from ..backends.base import Cursor, GroupCursor
from ..backends.frames import send_now
from ..backends.memory import MemoryBackend
from ..codec import to_json
from ..errors import GroupError
from .protocol import PROTOCOL_VERSION, FrameError, dumps, parse_frame, plain_publish

__all__ = ["Broker", "BrokerHandle", "add_arguments", "main", "run_from_args", "serve"]

logger = logging.getLogger("echo_lab.broker")

#: Entries read from the backend per deliver frame (at most; credit may make it fewer).
DELIVER_BATCH = 512
#: A deliver frame larger than this is split into several.
DELIVER_BYTES = 1 << 20

#: Default limits of a broker (override any of them as keyword arguments).
DEFAULT_LIMITS: dict[str, Any] = {
    "max_frame": 1 << 20,  # bytes per incoming frame; larger frames close with 1009
    "max_send_queue": 4 << 20,  # bytes queued for one client before it is disconnected
    "max_subscriptions": 256,  # per connection
    "max_bad_frames": 32,  # error frames for bad input before the connection is closed
    "max_maxlen": 1_000_000,  # retention a client may ask for, per topic
    "default_maxlen": 100_000,
    "auth_timeout": 10.0,  # seconds a client has to authenticate when a token is set
    "lane_depth": 64,  # queued requests per connection before reading pauses
}

CLOSE_UNAUTHORIZED = 4001
CLOSE_POLICY = 1008


class Broker:
    """An asyncio WebSocket server in front of one backend.

    Use :func:`serve` for a broker running in the background (notebooks, tests), or
    ``await broker.start()`` / ``await broker.stop()`` on a loop of your own.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        owns_backend: bool = False,
        **limits: Any,
    ) -> None:
        unknown = set(limits) - set(DEFAULT_LIMITS)
        if unknown:
            raise ValueError(f"unknown broker limit(s): {', '.join(sorted(unknown))}")
        self.backend = backend
        self.host = host
        self.port = port
        self.token = token or None
        self.limits = {**DEFAULT_LIMITS, **limits}
        self._owns_backend = owns_backend
        self._server: Server | None = None
        self._conns: set[_Conn] = set()
        #: topic -> the push subscriptions on this broker (delivered to before replying)
        self.watched: dict[str, set[_Sub]] = {}
        #: Counters (read any time): connections, frames, messages and disconnect reasons.
        self.stats: dict[str, Any] = {
            "connections": 0,
            "open_connections": 0,
            "frames_in": 0,
            "published": 0,
            "delivered": 0,
            "bad_frames": 0,
            "errors": 0,
            "disconnects": {"slow_consumer": 0, "bad_frames": 0, "unauthorized": 0},
        }

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running broker."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"ws://{host}:{self.port}"

    async def start(self) -> None:
        """Connect the backend and start listening (``port=0`` picks a free port)."""
        await self.backend.connect()
        self._server = await ws_serve(
            self._handle,
            self.host,
            self.port,
            compression=None,
            max_size=self.limits["max_frame"],
            max_queue=64,
            write_limit=self.limits["max_send_queue"] + (1 << 20),
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            server_header=None,
            process_request=_http_page,
            create_connection=_ServerConnection,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("echo_lab broker on %s serving %s", self.url, self.backend.url)

    async def stop(self) -> None:
        """Close every connection, stop listening and close the backend if it owns it."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        for conn in list(self._conns):
            await conn.cleanup()
        if self._owns_backend:
            await self.backend.close()

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Conn(self, ws)
        self._conns.add(conn)
        self.stats["connections"] += 1
        self.stats["open_connections"] += 1
        run = asyncio.ensure_future(conn.run())
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            # run() may be stuck behind a request (say, a publish waiting for room in a full
            # memory log): a closed connection still ends it and releases its cursors.
            await asyncio.wait({run, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (run, closed):
                if not task.done():
                    task.cancel()
            await asyncio.gather(run, closed, return_exceptions=True)
            self.stats["open_connections"] -= 1
            self._conns.discard(conn)
            await conn.cleanup()


class _ServerConnection(ServerConnection):
    """Hands complete frames to ``on_frame`` as they are parsed (no reader-task hop), while
    nothing is queued before them; everything else goes through ``recv()`` as usual."""

    on_frame: Callable[[Frame], bool] | None = None
    queued = 0  #: complete messages in the recv() queue, not yet handled

    def process_event(self, event: Any) -> None:
        if type(event) is Frame and event.opcode in _DATA:
            handler = self.on_frame
            if (
                handler is not None
                and not self.queued
                and event.fin
                and event.opcode is not Opcode.CONT
                and handler(event)
            ):
                return
            if event.fin:
                self.queued += 1
        super().process_event(event)


_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class _Sub:
    """One subscription of a connection: a fan-out cursor pushed with credit, or a group
    cursor read on request (``pull``).

    A fan-out subscription on in-process storage (``conn.direct``) runs without a task: its
    pending ``cursor.read`` is driven by :meth:`pump` from the callbacks of what the read
    waits for, and a publish on this broker resumes it at once (:meth:`kick`), so the entries
    go out in the same event-loop iteration as the publish frame that added them. On other
    storage (Redis: its reads need a task for their timeouts) a task runs the same loop.
    """

    __slots__ = (
        "blocked",
        "conn",
        "credit",
        "cursor",
        "ended",
        "group",
        "head",
        "id",
        "pending",
        "pumping",
        "request",
        "task",
        "waiter",
    )

    def __init__(self, conn: _Conn, sub_id: Any, cursor: Cursor | GroupCursor, credit: int):
        self.conn = conn
        self.id = sub_id
        self.cursor = cursor
        self.group = isinstance(cursor, GroupCursor)
        self.credit = credit
        self.request: tuple[Any, int, float | None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.head = b'{"op":"deliver","sub":' + orjson.dumps(sub_id) + b',"entries":'
        self.pending: Coroutine[Any, Any, list[Any]] | None = None  # the read being driven
        self.blocked: Any = None  # what that read waits for
        self.pumping = False
        self.ended = False

    def start(self) -> None:
        if self.group:
            self.task = asyncio.get_running_loop().create_task(self._pull_loop())
            return
        self.conn.broker.watched.setdefault(self.cursor.topic, set()).add(self)
        if self.conn.direct:
            self.pump()
        else:
            self.task = asyncio.get_running_loop().create_task(self._push_loop())

    def wake(self) -> None:
        """More credit (fan-out) or a pull request (group) arrived."""
        if self.task is None and not self.group:
            self.pump()
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def deliver(self, entries: list[Any]) -> bool:
        """Write entries in deliver frames (split if big); ``False`` once the client is gone."""
        self.credit -= len(entries)
        self.conn.broker.stats["delivered"] += len(entries)
        head, write = self.head, self.conn.write
        data = dumps(entries)
        if len(data) > DELIVER_BYTES and len(entries) > 1:  # big entries: split
            step = max(1, len(entries) * DELIVER_BYTES // len(data))
            for i in range(0, len(entries), step):
                if not write(head + dumps(entries[i : i + step]) + b"}"):
                    return False
            return True
        return write(head + data + b"}")

    # -- fan-out on in-process storage: no task ---------------------------------------------
    def kick(self) -> None:
        """Entries were just appended to the topic here: if the pending read was woken by it,
        resume it now instead of in the next loop iteration."""
        blocked = self.blocked
        if blocked is not None and blocked.done():
            self.blocked = None
            self.pump()

    def _resume(self, fut: Any) -> None:
        if fut is self.blocked:
            self.blocked = None
            self.pump()

    def pump(self) -> None:
        """Deliver what the cursor has within the credit, then leave a read pending on it,
        to be resumed by :meth:`_resume` (or :meth:`kick`)."""
        if self.blocked is not None or self.pumping or self.ended:
            return
        self.pumping = True
        try:
            while self.credit > 0:
                read = self.pending
                if read is None:
                    read = self.pending = self.cursor.read(min(self.credit, DELIVER_BATCH), None)
                try:
                    blocked = read.send(None)
                except StopIteration as done:
                    self.pending = None
                    # nothing: read(None) returns so only once the cursor closed
                    if not done.value or not self.deliver(done.value):
                        self.ended = True
                        return
                    continue
                except (Exception, asyncio.CancelledError) as exc:  # the backend failed
                    self.pending = None
                    self.ended = True
                    self.conn.write(dumps(_error_for(exc, sub=self.id)))
                    return
                if not isinstance(blocked, asyncio.Future):  # a bare yield (sleep(0))
                    blocked = asyncio.get_running_loop().create_future()
                    blocked.set_result(None)
                self.blocked = blocked
                blocked.add_done_callback(self._resume)
                return
        finally:
            self.pumping = False

    # -- fan-out on other storage, and groups: a task -----------------------------------------
    async def _push_loop(self) -> None:
        conn, cursor = self.conn, self.cursor
        try:
            while True:
                if self.credit <= 0:
                    await self._wait()
                    continue
                entries = await cursor.read(min(self.credit, DELIVER_BATCH), None)
                if not entries:  # read(None) returns nothing only once the cursor closed
                    return
                if not self.deliver(entries):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the backend failed: tell the client, end the sub
            await conn.send(_error_for(exc, sub=self.id))

    async def _pull_loop(self) -> None:
        conn, stats = self.conn, self.conn.broker.stats
        cursor: Any = self.cursor
        while True:
            if self.request is None:
                await self._wait()
                continue
            rid, count, timeout = self.request
            try:
                entries = await cursor.read(count, timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await conn.send(_error_for(exc, rid=rid, sub=self.id))
            else:
                stats["delivered"] += len(entries)
                await conn.send({"op": "ok", "rid": rid, "sub": self.id, "result": entries})
            self.request = None

    async def close(self) -> None:
        self.ended = True
        if not self.group:
            watched, topic = self.conn.broker.watched, self.cursor.topic
            subs = watched.get(topic)
            if subs is not None:
                subs.discard(self)
                if not subs:
                    del watched[topic]
        self.blocked = None
        if self.pending is not None:  # run the read's cleanup (it leaves its wait)
            pending, self.pending = self.pending, None
            with contextlib.suppress(Exception):
                pending.close()
        if self.task is not None:
            self.task.cancel()
            # Do not hang on a backend read that is slow to honour the cancellation.
            await asyncio.wait({self.task}, timeout=1.0)
        with contextlib.suppress(Exception):
            await self.cursor.close()


def _error_for(exc: BaseException, rid: Any = None, sub: Any = None) -> dict[str, Any]:
    if isinstance(exc, FrameError):
        err = exc
    elif isinstance(exc, GroupError):
        err = FrameError("group", str(exc))
    elif isinstance(exc, ConnectionError | OSError | TimeoutError):
        err = FrameError("backend", f"storage unavailable: {exc}")
    elif isinstance(exc, ValueError | TypeError):
        err = FrameError("bad_field", str(exc))
    else:
        logger.exception("internal error in the broker", exc_info=exc)
        err = FrameError("internal", f"internal error: {type(exc).__name__}: {exc}")
    err.rid = rid if rid is not None else err.rid
    err.sub = sub if sub is not None else err.sub
    return err.frame()


class _Conn:
    """The broker side of one client connection."""

    def __init__(self, broker: Broker, ws: ServerConnection) -> None:
        self.broker = broker
        self.ws = ws
        self.limits = broker.limits
        self.subs: dict[Any, _Sub] = {}
        self.bad = 0
        self.authed = broker.token is None
        self.closing = False
        self.lane: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.limits["lane_depth"])
        self.lane_busy = False
        self.lane_task: asyncio.Task[None] | None = None
        self.background: set[asyncio.Future[Any]] = set()
        self.blocker: asyncio.Future[Any] | None = None
        # Frames are handled as they are parsed only for in-process storage, whose calls
        # never need a current task (Redis clients use timeouts, which do).
        self.direct = isinstance(broker.backend, MemoryBackend)
        ws.on_frame = self.on_frame  # type: ignore[attr-defined]

    # -- sending ---------------------------------------------------------------------------
    async def send(self, frame: dict[str, Any]) -> bool:
        """Send a frame to the client; ``False`` if the connection is gone or too slow."""
        return self.write(dumps(frame))

    def write(self, data: bytes) -> bool:
        """Write an encoded frame to the socket now (no await: callbacks use it too), unless
        the connection is closing, or the client's send queue is full (then it is dropped)."""
        if self.closing:
            return False
        ws = self.ws
        limit = self.limits["max_send_queue"]
        queued = ws.transport.get_write_buffer_size()
        if queued and queued + len(data) > limit:
            self.slow()
            return False
        # False only when the connection is not open (closing: nothing more can be sent).
        return send_now(ws, data, limit)

    def slow(self) -> None:
        """The client stopped reading: count it and drop the connection at once."""
        if self.closing:
            return
        self.closing = True
        self.broker.stats["disconnects"]["slow_consumer"] += 1
        logger.warning("disconnecting a slow client %s: send queue full", self.ws.remote_address)
        self.ws.transport.abort()

    async def close(self, code: int, reason: str, counter: str | None = None) -> None:
        if counter:
            self.broker.stats["disconnects"][counter] += 1
        self.closing = True
        # In a task of its own: closing waits for the client (and may be called from a
        # frame handled outside any task).
        task = asyncio.ensure_future(self.ws.close(code, reason))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- receiving -------------------------------------------------------------------------
    async def run(self) -> None:
        ws = self.ws
        if not self.authed and not await self._auth_from_request():
            return
        self.lane_task = asyncio.get_running_loop().create_task(self._lane())
        stats = self.broker.stats
        try:
            while not self.closing:
                if self.authed:
                    data = await ws.recv()
                else:
                    try:
                        async with asyncio.timeout(self.limits["auth_timeout"]):
                            data = await ws.recv()
                    except TimeoutError:
                        await self.close(
                            CLOSE_UNAUTHORIZED,
                            'unauthorized: send {"op": "hello", "token": …} first',
                            "unauthorized",
                        )
                        return
                blocker = self.blocker
                if blocker is not None and not blocker.done():
                    await blocker
                stats["frames_in"] += 1
                await self._frame(data)
                ws.queued -= 1  # type: ignore[attr-defined]
        except ConnectionClosed:
            pass

    def on_frame(self, event: Frame) -> bool:
        """Handle a complete frame as soon as it is parsed, if nothing is queued before it
        (``False``: queue it for :meth:`run`). Work that must wait finishes in a task that
        later frames wait for, so frames are always handled in order."""
        blocker = self.blocker
        if (
            not self.direct
            or not self.authed
            or self.closing
            or (blocker is not None and not blocker.done())
        ):
            return False
        if event.opcode is Opcode.TEXT:
            if self.lane.empty() and not self.lane_busy:
                frame = plain_publish(event.data)
                if frame is not None:  # the common case, without the general routing
                    self.broker.stats["frames_in"] += 1
                    self._dispatch_now(_Conn.op_publish, frame)
                    return True
            try:
                data: str | bytes = event.data.decode()
            except UnicodeDecodeError:
                return False  # websockets closes the connection (1007)
        else:
            data = event.data
        self.broker.stats["frames_in"] += 1
        coro = self._frame(data)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return True
        except Exception:  # a bug: never let it reach the protocol parser
            self.broker.stats["errors"] += 1
            logger.exception("internal error handling a frame")
            return True
        self.blocker = asyncio.ensure_future(_Resume(coro, waiting_on))
        return True

    async def _auth_from_request(self) -> bool:
        """Accept a token from ``?token=`` or ``Authorization: Bearer``; refuse a wrong one."""
        request = self.ws.request
        given = None
        if request is not None:
            query = parse_qs(urlsplit(request.path).query)
            given = (query.get("token") or [None])[0]
            auth = request.headers.get("Authorization", "")
            if given is None and auth.startswith("Bearer "):
                given = auth[7:]
        if given is None:
            return True  # may still authenticate with a hello frame
        if self._token_ok(given):
            self.authed = True
            return True
        await self.close(CLOSE_UNAUTHORIZED, "unauthorized: invalid token", "unauthorized")
        return False

    def _token_ok(self, given: Any) -> bool:
        token = self.broker.token
        return token is None or (
            isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())
        )

    async def _frame(self, data: str | bytes) -> None:
        try:
            frame = parse_frame(data)
        except FrameError as exc:
            if not self.authed:
                await self.close(
                    CLOSE_UNAUTHORIZED, f"unauthorized: {exc.message}"[:120], "unauthorized"
                )
                return
            await self._bad(exc)
            return
        op = frame["op"]
        if not self.authed and op != "hello":
            await self.close(
                CLOSE_UNAUTHORIZED,
                'unauthorized: this broker needs a token: send {"op": "hello", "token": …}',
                "unauthorized",
            )
            return
        inline = _INLINE.get(op)
        sub = frame.get("sub")  # validated only for the operations that take one
        if inline is not None and type(sub) in (int, str) and sub in self.subs:
            await self._dispatch(inline, frame)
        elif self.lane.empty() and not self.lane_busy:
            self._dispatch_now(inline or _LANE[op], frame)
        else:  # publishes and requests run in order on the lane (so do ops racing them)
            await self.lane.put(frame)

    def _dispatch_now(self, handler: Any, frame: dict[str, Any]) -> None:
        """Nothing queued: run the request now, and hand it to the lane only if it has to wait
        (say, a full memory log), so that reading goes on and order is kept."""
        coro = self._dispatch(handler, frame)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
        self.lane.put_nowait(_Resume(coro, waiting_on))  # type: ignore[arg-type]

    async def _bad(self, exc: FrameError) -> None:
        self.broker.stats["bad_frames"] += 1
        self.bad += 1
        await self.send(exc.frame())
        if self.bad >= self.limits["max_bad_frames"]:
            await self.close(
                CLOSE_POLICY, f"too many bad frames ({self.bad}); last: {exc.code}", "bad_frames"
            )

    async def _dispatch(self, handler: Any, frame: dict[str, Any]) -> None:
        try:
            result = await handler(self, frame)
        except FrameError as exc:
            exc.rid = frame["rid"]
            if exc.code in ("bad_field", "unknown_sub", "duplicate_sub", "limit"):
                await self._bad(exc)
            else:
                await self.send(exc.frame())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.broker.stats["errors"] += 1
            await self.send(_error_for(exc, rid=frame["rid"]))
        else:
            if result is not _NO_REPLY and frame["rid"] is not None:
                await self.send({"op": "ok", "rid": frame["rid"], "result": result})

    async def _lane(self) -> None:
        lane = self.lane
        while True:
            frame: Any = await lane.get()
            self.lane_busy = True
            try:
                if type(frame) is _Resume:
                    await frame
                else:
                    await self._dispatch(_INLINE.get(frame["op"]) or _LANE[frame["op"]], frame)
            finally:
                self.lane_busy = False

    async def cleanup(self) -> None:
        self.closing = True
        if self.background:  # a close handshake under way: let it finish (bounded)
            await asyncio.wait(set(self.background), timeout=3)
        if self.blocker is not None and not self.blocker.done():
            self.blocker.cancel()
        if self.lane_task is not None:
            self.lane_task.cancel()
            with contextlib.suppress(BaseException):
                await self.lane_task
            self.lane_task = None
        subs, self.subs = list(self.subs.values()), {}
        for sub in subs:
            await sub.close()

    # -- operations ------------------------------------------------------------------------
    def _sub(self, frame: dict[str, Any]) -> _Sub:
        sub = self.subs.get(frame["sub"])
        if sub is None:
            raise FrameError("unknown_sub", f"no subscription {frame['sub']!r} on this connection")
        return sub

    async def op_hello(self, frame: dict[str, Any]) -> Any:
        if not self._token_ok(frame["token"]):
            reason = "invalid token" if frame["token"] else "this broker needs a token"
            await self.close(CLOSE_UNAUTHORIZED, f"unauthorized: {reason}", "unauthorized")
            return _NO_REPLY
        self.authed = True
        limits = self.limits
        return {
            "server": "echo_lab",
            "protocol": PROTOCOL_VERSION,
            "backend": self.broker.backend.url.partition("://")[0],
            "limits": {
                k: limits[k]
                for k in ("max_frame", "max_send_queue", "max_subscriptions", "max_maxlen")
            },
        }

    async def op_ping(self, frame: dict[str, Any]) -> Any:
        return "pong"

    async def op_publish(self, frame: dict[str, Any]) -> Any:
        entries = frame["entries"]
        if entries is None:
            if frame["fields"] is not None:
                entries = [frame["fields"]]
            else:
                fields = {"data": to_json(frame["data"])}
                if frame["type"] is not None:
                    fields["type"] = frame["type"].encode()
                if frame["headers"]:
                    fields["headers"] = to_json(frame["headers"])
                entries = [fields]
        maxlen = min(frame["maxlen"] or self.limits["default_maxlen"], self.limits["max_maxlen"])
        ids = await self.broker.backend.append(frame["topic"], entries, maxlen)
        self.broker.stats["published"] += len(ids)
        subs = self.broker.watched.get(frame["topic"])
        if subs:
            # Local subscribers were just woken: those on in-process storage deliver now;
            # the publisher's acknowledgement is written after the others had their turn
            # too (delivery latency over acknowledgement latency).
            for sub in tuple(subs):
                sub.kick()
            if frame["rid"] is not None:
                self.ws.loop.call_soon(self._ack, frame["rid"], ids)
                return _NO_REPLY
        return ids

    def _ack(self, rid: Any, ids: list[str]) -> None:
        self.write(b'{"op":"ok","rid":%b,"result":%b}' % (orjson.dumps(rid), orjson.dumps(ids)))

    async def op_subscribe(self, frame: dict[str, Any]) -> Any:
        sub_id = frame["sub"]
        if sub_id in self.subs:
            raise FrameError("duplicate_sub", f"subscription {sub_id!r} exists already")
        if len(self.subs) >= self.limits["max_subscriptions"]:
            raise FrameError(
                "limit", f"at most {self.limits['max_subscriptions']} subscriptions per connection"
            )
        backend = self.broker.backend
        if frame["group"] is None:
            cursor: Cursor | GroupCursor = await backend.cursor(frame["topic"], frame["start"])
            result = {"last_id": cursor.last_id}
        else:
            consumer = frame["consumer"] or f"c-{uuid.uuid4().hex[:10]}"
            cursor = await backend.group_cursor(
                frame["topic"], frame["group"], consumer, frame["start"], frame["claim_idle"]
            )
            result = {"consumer": consumer}
        sub = self.subs[sub_id] = _Sub(self, sub_id, cursor, frame["credit"])
        if frame["rid"] is not None:
            await self.send({"op": "ok", "rid": frame["rid"], "sub": sub_id, "result": result})
        sub.start()
        return _NO_REPLY

    async def op_credit(self, frame: dict[str, Any]) -> Any:
        sub = self._sub(frame)
        if sub.group:
            raise FrameError("bad_field", "credit: group subscriptions are read with 'pull'")
        sub.credit = min(sub.credit + frame["n"], 1 << 30)
        sub.wake()
        return _NO_REPLY

    async def op_pull(self, frame: dict[str, Any]) -> Any:
        sub = self._sub(frame)
        if not sub.group:
            raise FrameError("bad_field", "pull: only group subscriptions are pulled; use credit")
        if sub.request is not None:
            raise FrameError("bad_field", "pull: one pull at a time per subscription")
        sub.request = (frame["rid"], frame["count"], frame["timeout"])
        sub.wake()
        return _NO_REPLY

    async def op_ack(self, frame: dict[str, Any]) -> Any:
        if frame["sub"] is not None:
            sub = self._sub(frame)
            if not sub.group:
                raise FrameError("bad_field", "ack: not a group subscription")
            cursor: Any = sub.cursor
            await cursor.ack(frame["ids"])
            return len(frame["ids"])
        return await self.broker.backend.ack(frame["topic"], frame["group"], frame["ids"])

    async def op_unsubscribe(self, frame: dict[str, Any]) -> Any:
        sub = self.subs.pop(frame["sub"], None)
        if sub is not None:
            await sub.close()
        return sub is not None

    async def op_history(self, frame: dict[str, Any]) -> Any:
        return await self.broker.backend.range(
            frame["topic"], frame["start"], frame["end"], frame["count"], reverse=frame["reverse"]
        )

    async def op_topics(self, frame: dict[str, Any]) -> Any:
        return await self.broker.backend.topics()

    async def op_info(self, frame: dict[str, Any]) -> Any:
        return await self.broker.backend.info(frame["topic"])

    async def op_groups(self, frame: dict[str, Any]) -> Any:
        return await self.broker.backend.groups(frame["topic"])

    async def op_pending(self, frame: dict[str, Any]) -> Any:
        return await self.broker.backend.pending(frame["topic"], frame["group"])

    async def op_claim(self, frame: dict[str, Any]) -> Any:
        return await self.broker.backend.claim(
            frame["topic"], frame["group"], frame["consumer"], frame["ids"]
        )

    async def op_delete(self, frame: dict[str, Any]) -> Any:
        await self.broker.backend.delete(frame["topic"])
        return True


_NO_REPLY = object()
_PAGE = Path(__file__).with_name("static") / "index.html"


def _http_page(connection: ServerConnection, request: Request) -> Response | None:
    """Answer a plain HTTP GET of ``/`` with the JavaScript client page; let WebSocket
    upgrades through."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    if urlsplit(request.path).path not in ("/", "/index.html"):
        return connection.respond(404, "Not found: the client page is at /\n")
    body = _PAGE.read_bytes()
    headers = Headers(
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(200, "OK", headers, body)


class _Resume:
    """Finishes, as an awaitable, a coroutine that was started eagerly and suspended."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation: pass it into the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                value = coro.send(sent)
            except StopIteration as stop:
                return stop.value


#: Operations handled as soon as they are read (control of existing subscriptions).
_INLINE = {
    "hello": _Conn.op_hello,
    "ping": _Conn.op_ping,
    "credit": _Conn.op_credit,
    "pull": _Conn.op_pull,
    "ack": _Conn.op_ack,
    "unsubscribe": _Conn.op_unsubscribe,
}
#: Operations run in order on the connection's request lane.
_LANE = {
    "publish": _Conn.op_publish,
    "subscribe": _Conn.op_subscribe,
    "history": _Conn.op_history,
    "topics": _Conn.op_topics,
    "info": _Conn.op_info,
    "groups": _Conn.op_groups,
    "pending": _Conn.op_pending,
    "claim": _Conn.op_claim,
    "delete": _Conn.op_delete,
}


# -- running in the background ----------------------------------------------------------------
class BrokerHandle:
    """A broker running on its own event loop in a daemon thread (see :func:`serve`)."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.broker = broker
        self._loop = loop
        self._thread = thread
        self._stopped = False

    @property
    def url(self) -> str:
        """``ws://host:port`` to give to :func:`echo_lab.connect` or a browser."""
        return self.broker.url

    @property
    def stats(self) -> dict[str, Any]:
        """The broker's counters (connections, messages, disconnect reasons)."""
        return self.broker.stats

    def stop(self) -> None:
        """Stop the broker and its thread (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.broker.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> BrokerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<echo_lab broker {self.url} serving {self.broker.backend.url} {state}>"


def _make_backend(redis: str | None, backend: Backend | str | None) -> tuple[Backend, bool]:
    if redis and backend is not None:
        raise ValueError("give either redis= or backend=, not both")
    if redis:
        return backend_from_url(redis), True
    if backend is None:
        return backend_from_url("memory://"), True
    if isinstance(backend, str):
        return backend_from_url(backend), True
    return backend, False


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    redis: str | None = None,
    *,
    backend: Backend | str | None = None,
    **limits: Any,
) -> BrokerHandle:
    """Start a broker in the background and return its handle (``.url``, ``.stop()``).

    Args:
        host: interface to bind (``127.0.0.1`` unless you mean to expose it).
        port: TCP port (``0``: a free one; read ``handle.url``).
        token: if set, clients must present it (``?token=``, ``Authorization: Bearer`` or a
            ``hello`` frame).
        redis: keep the topics in Redis Streams at this URL, so several brokers serve them.
        backend: another backend (URL or instance) instead; default ``memory://`` (shared
            with ``echo_lab.connect("memory://")`` in this process).
        **limits: override :data:`DEFAULT_LIMITS`.
    """
    store, owned = _make_backend(redis, backend)
    broker = Broker(store, host=host, port=port, token=token, owns_backend=owned, **limits)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"echo-lab-broker:{port}", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(broker.start(), loop).result(30)
    except BaseException:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        raise
    return BrokerHandle(broker, loop, thread)


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``serve``'s options to a parser (``echo-lab serve`` uses this)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    parser.add_argument("--token", default=None, help="require this token from clients")
    parser.add_argument("--redis", default=None, help="keep topics in Redis at this URL")
    parser.add_argument("--url", dest="backend", default=None, help="backend URL to serve")
    parser.add_argument("--max-frame", type=int, default=DEFAULT_LIMITS["max_frame"])
    parser.add_argument("--max-send-queue", type=int, default=DEFAULT_LIMITS["max_send_queue"])
    parser.add_argument(
        "--max-subscriptions", type=int, default=DEFAULT_LIMITS["max_subscriptions"]
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run a broker in the foreground until SIGINT/SIGTERM (parsed ``serve`` options)."""
    store, owned = _make_backend(args.redis, args.backend)
    broker = Broker(
        store,
        host=args.host,
        port=args.port,
        token=args.token,
        owns_backend=owned,
        max_frame=args.max_frame,
        max_send_queue=args.max_send_queue,
        max_subscriptions=args.max_subscriptions,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await broker.start()
        print(f"echo_lab broker listening on {broker.url} (backend {store.url})", flush=True)
        try:
            await stop.wait()
        finally:
            await broker.stop()

    asyncio.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``echo-lab serve [--host H] [--port P] [--token T] [--redis URL]``."""
    parser = argparse.ArgumentParser(prog="echo-lab serve", description="echo_lab broker")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
