"""Redis Streams backend (``redis://``, ``rediss://``, standalone or Redis Cluster).

Topics are stream keys (optionally under a key prefix); retention is ``XADD MAXLEN``
(``~`` for large limits); groups are ``XREADGROUP``/``XACK`` with ``XAUTOCLAIM`` re-delivery
after ``claim_idle``. It talks to the server through redis-py's connections and hiredis
parser, but drives them itself so that the hot paths stay short:

* every cursor owns one connection and reads in batches (``COUNT``) with blocking reads of
  at most :data:`BLOCK_MAX` seconds, well under the socket timeout; a group cursor's acks
  are pipelined with its next read;
* async appends from any number of tasks are queued and flushed as one pipeline per loop
  iteration (per node); sync appends (:meth:`RedisBackend.append_sync`) go straight to the
  server on a sync connection, and concurrent threads are coalesced into one pipeline;
* in a cluster, every command goes to the primary owning its key's slot (``CLUSTER SLOTS``),
  refreshed on ``MOVED``.

Connection failures surface as :class:`~echo_lab.errors.BackendConnectionError` (a
``ConnectionError``) naming host and port, never the password; a vanished group as
:class:`~echo_lab.errors.GroupError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from redis import connection as sync_connection
from redis.asyncio import connection as async_connection
from redis.crc import key_slot
from redis.exceptions import AskError, AuthenticationError, InvalidResponse, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..codec import Fields
from ..errors import BackendConnectionError, GroupError
from ..ids import Position, format_id, parse_id, parse_start
from .base import Backend, Cursor, GroupCursor, GroupEntry, RawEntry

__all__ = ["BLOCK_MAX", "RedisBackend"]

logger = logging.getLogger("echo_lab.redis")

#: Longest single blocking read, in seconds (the socket timeout is several times longer).
BLOCK_MAX = 1.0
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 1.5
#: ``maxlen`` above which trimming is approximate (``MAXLEN ~``, cheap); exact below it.
APPROX_TRIM_ABOVE = 1000
_CHUNK = 2000  # commands per pipeline write
_PENDING_PAGE = 1000

#: Errors after which a connection is dropped and the call retried or reported as unreachable.
_NET_ERRORS = (RedisConnectionError, RedisTimeoutError, InvalidResponse, OSError)
_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off", ""))

Addr = tuple[str, int]

# No CLIENT SETINFO round trips on connect (redis-py >= 6.3 spells it driver_info=None).
try:
    import redis.driver_info  # noqa: F401

    _NO_SETINFO: dict[str, Any] = {"driver_info": None}
except ImportError:  # pragma: no cover - older redis-py
    _NO_SETINFO = {"lib_name": None, "lib_version": None}


# -- reply parsing -------------------------------------------------------------------------
_KEYS: dict[bytes, str] = {}


def _key(raw: bytes) -> str:
    text = _KEYS.get(raw)
    if text is None:
        text = raw.decode("utf-8", "backslashreplace")
        if len(_KEYS) < 4096:
            _KEYS[raw] = text
    return text


def _fields(flat: list[bytes]) -> dict[str, bytes]:
    if len(flat) == 2:
        return {_KEYS.get(flat[0]) or _key(flat[0]): flat[1]}
    it = iter(flat)
    return {_key(k): v for k, v in zip(it, it, strict=True)}


def _entries(items: list[Any]) -> list[RawEntry]:
    return [(id_.decode(), _fields(flat)) for id_, flat in items if flat is not None]


def _new_entries(items: list[Any]) -> list[GroupEntry]:
    """``XREADGROUP >`` entries, delivered for the first time (the hot path, inlined)."""
    keys = _KEYS
    out: list[GroupEntry] = []
    append = out.append
    for id_, flat in items:
        if flat is None:
            continue
        if len(flat) == 2:
            append((id_.decode(), {keys.get(flat[0]) or _key(flat[0]): flat[1]}, 1))
        else:
            append((id_.decode(), _fields(flat), 1))
    return out


def _text(value: Any) -> Any:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _pairs(flat: list[Any]) -> dict[str, Any]:
    it = iter(flat)
    return {_text(k): v for k, v in zip(it, it, strict=True)}


def _flatten(fields: Fields) -> list[Any]:
    out: list[Any] = []
    for k, v in fields.items():
        out.append(k)
        out.append(v)
    return out


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot send {type(value).__name__} to Redis: {value!r}")


def _pack(cmds: Sequence[Sequence[Any]]) -> bytes:
    """RESP-encode commands (a lean replacement for redis-py's per-argument packer)."""
    out: list[bytes] = []
    append = out.append
    for cmd in cmds:
        if type(cmd) is bytes:  # already packed
            append(cmd)
            continue
        append(b"*%d\r\n" % len(cmd))
        for value in cmd:
            kind = type(value)
            data = value if kind is bytes else value.encode() if kind is str else _arg(value)
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")
    return b"".join(out)


def _pack_with_ids(head: Sequence[Any], ids: Sequence[str]) -> bytes:
    """RESP-encode ``(*head, *ids)`` with the (many) str ids formatted in one pass."""
    text = "".join([f"${len(i)}\r\n{i}\r\n" for i in ids])
    if not text.isascii():  # lengths above are in characters: only right for ASCII
        return _pack([(*head, *ids)])
    body = _pack([head])
    return b"*%d" % (len(head) + len(ids)) + body[body.index(b"\r\n") :] + text.encode()


def _start_id(start: Position) -> str | None:
    after = parse_start(start)
    return None if after is None else format_id(after)


# -- connections ---------------------------------------------------------------------------
class _Link:
    """One async connection to one node, used by one task at a time."""

    __slots__ = ("_backend", "addr", "conn")

    def __init__(self, backend: RedisBackend, addr: Addr) -> None:
        self._backend = backend
        self.addr = addr
        self.conn: async_connection.Connection | None = None

    async def execute(self, cmds: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``cmds`` as one pipeline; return the replies (errors as exception values)."""
        conn = self.conn
        if conn is None:
            conn = self.conn = self._backend._async_connection(self.addr)
        try:
            if not conn.is_connected:
                await conn.connect()
            # Written directly: redis-py's send_packed_command wraps the write in
            # asyncio.wait_for, which on Python 3.11 can swallow a cancellation (and costs
            # a task per command). drain() only suspends when the socket buffer is full.
            writer = conn._writer
            writer.write(_pack(cmds))
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(SOCKET_TIMEOUT):
                    await writer.drain()
            out = []
            for _ in cmds:
                try:
                    out.append(await conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
            return out
        except BaseException:
            self.conn = None
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


class _SyncLink:
    """One sync connection to one node, used by one thread at a time."""

    __slots__ = ("_backend", "addr", "conn")

    def __init__(self, backend: RedisBackend, addr: Addr) -> None:
        self._backend = backend
        self.addr = addr
        self.conn: sync_connection.Connection | None = None

    def execute(self, cmds: Sequence[Sequence[Any]]) -> list[Any]:
        conn = self.conn
        if conn is None:
            conn = self.conn = self._backend._sync_connection(self.addr)
        try:
            if conn._sock is None:
                conn.connect()
            elif conn._parser.can_read(0):  # the server closed an idle connection
                conn.disconnect()
                conn.connect()
            conn.send_packed_command([_pack(cmds)], False)
            out = []
            for _ in cmds:
                try:
                    out.append(conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
            return out
        except BaseException:
            self.conn = None
            with contextlib.suppress(Exception):
                conn.disconnect()
            raise

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.disconnect()


class _SyncItem:
    __slots__ = ("addr", "cmds", "error", "event", "lead", "result")

    def __init__(self, addr: Addr, cmds: list[list[Any]]) -> None:
        self.addr = addr
        self.cmds = cmds
        self.result: list[Any] | None = None
        self.error: BaseException | None = None
        self.event: threading.Event | None = None
        self.lead = False


class _SyncAppender:
    """Group commit for sync appends: one thread (the leader) sends everything queued by
    all threads as one pipeline per node while the others wait; alone, a thread just sends."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._queue: list[_SyncItem] = []
        self._busy = False
        self.links: dict[Addr, _SyncLink] = {}

    def submit(self, addr: Addr, cmds: list[list[Any]]) -> list[Any]:
        item = _SyncItem(addr, cmds)
        with self._lock:
            self._queue.append(item)
            if self._busy:
                item.event = threading.Event()
                lead = False
            else:
                self._busy = lead = True
        if not lead:
            item.event.wait()  # type: ignore[union-attr]
            lead = item.lead
        if lead:
            self._drain(item)
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def _drain(self, me: _SyncItem) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            by_node: dict[Addr, list[_SyncItem]] = {}
            for item in batch:
                by_node.setdefault(item.addr, []).append(item)
            for addr, items in by_node.items():
                self._send(addr, items)
        finally:
            for item in batch:
                if item is not me and item.event is not None:
                    item.event.set()
            with self._lock:
                nxt = self._queue[0] if self._queue else None
                if nxt is None:
                    self._busy = False
                else:
                    nxt.lead = True
            if nxt is not None:
                nxt.event.set()  # type: ignore[union-attr]

    def _send(self, addr: Addr, items: list[_SyncItem]) -> None:
        link = self.links.get(addr)
        if link is None:
            link = self.links[addr] = _SyncLink(self._backend, addr)
        cmds = [c for item in items for c in item.cmds]
        try:
            replies = _with_retry_sync(link, cmds, self._backend)
        except BaseException as exc:
            for item in items:
                item.error = exc
            return
        i = 0
        for item in items:
            n = len(item.cmds)
            item.result = replies[i : i + n]
            i += n

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()


def _with_retry_sync(link: _SyncLink, cmds: list[list[Any]], backend: RedisBackend) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(cmds), _CHUNK):
        chunk = cmds[i : i + _CHUNK]
        try:
            out += link.execute(chunk)
        except _NET_ERRORS:
            try:
                out += link.execute(chunk)  # one retry on a fresh connection
            except _NET_ERRORS as exc:
                raise backend._net_error(exc, link.addr) from None
    return out


# -- the backend ---------------------------------------------------------------------------
class RedisBackend(Backend):
    """Redis Streams: ``redis://[[user]:password@]host[:port][/db][?prefix=P&cluster=1]``.

    Options: ``prefix`` (key prefix of every topic) and ``cluster`` (``True``: a Redis
    Cluster; by default detected at connect time).
    """

    schemes = ("redis", "rediss")

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        prefix: str = "",
        cluster: bool | None = None,
    ) -> None:
        if cluster and db:
            raise ValueError(f"a Redis Cluster has only database 0, not {db}")
        self.host, self.port, self.db = host, port, db
        self.username = username
        self._password = password
        self.ssl = ssl
        self.prefix = prefix
        self._prefix_b = prefix.encode()
        self._cluster_option = cluster
        self.cluster = bool(cluster)
        self._seed: Addr = (host, port)
        self._slots: list[int] = []  # sorted slot-range starts
        self._slot_nodes: list[tuple[int, Addr]] = []  # (range end, node) per start
        self._admin: dict[Addr, tuple[_Link, asyncio.Lock]] = {}
        self._append_links: dict[Addr, _Link] = {}
        self._queue: list[tuple[Addr, list[list[Any]], asyncio.Future[list[Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._sync = _SyncAppender(self)
        self._cursors: set[_RedisCursor | _RedisGroupCursor] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisBackend {self.url}>"

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """Build from a ``redis://`` or ``rediss://`` URL and the options ``prefix``/``cluster``.

        Raises:
            ValueError: for a malformed URL or an unknown option (named).
        """
        unknown = set(options) - {"prefix", "cluster"}
        if unknown:
            raise ValueError(
                f"unknown option(s) for redis://: {', '.join(sorted(unknown))} "
                "(known: cluster, prefix)"
            )
        parts = urlsplit(url)
        shown = _redact(url)
        if parts.scheme not in cls.schemes:
            raise ValueError(f"malformed Redis URL {shown!r}: expected redis:// or rediss://")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"malformed Redis URL {shown!r}: invalid port") from None
        if parts.fragment:
            raise ValueError(f"malformed Redis URL {shown!r}: unexpected fragment")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(
                f"malformed Redis URL {shown!r}: the path must be a database number, got {path!r}"
            )
        db = int(path) if path else 0
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "db" and value.isdigit() and not path:
                db = int(value)
                continue
            if name not in ("prefix", "cluster"):
                raise ValueError(
                    f"malformed Redis URL {shown!r}: unknown query parameter {name!r} "
                    "(known: prefix, cluster, db)"
                )
            query[name] = value
        prefix = options.get("prefix", query.get("prefix", ""))
        if not isinstance(prefix, str):
            raise ValueError(f"option prefix must be a string, got {prefix!r}")
        cluster: Any = None
        if "cluster" in query:
            flag = query["cluster"].lower()
            if flag not in _TRUE | _FALSE:
                raise ValueError(f"malformed Redis URL {shown!r}: cluster={flag!r}")
            cluster = flag in _TRUE
        if "cluster" in options:
            cluster = options["cluster"]
            if cluster is not None and not isinstance(cluster, bool):
                raise ValueError(f"option cluster must be True or False, got {cluster!r}")
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            ssl=parts.scheme == "rediss",
            prefix=prefix,
            cluster=cluster,
        )

    @property
    def url(self) -> str:
        """The URL (the password, if any, shown as ``***``)."""
        auth = ""
        if self.username or self._password is not None:
            auth = quote(self.username or "", safe="")
            auth += ":***@" if self._password is not None else "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.ssl else "redis"
        query = []
        if self.prefix:
            query.append(f"prefix={quote(self.prefix, safe='')}")
        if self.cluster:
            query.append("cluster=1")
        tail = f"?{'&'.join(query)}" if query else ""
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}{tail}"

    def _conn_kwargs(self, addr: Addr) -> dict[str, Any]:
        return {
            "host": addr[0],
            "port": addr[1],
            "db": self.db,
            "username": self.username,
            "password": self._password,
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_keepalive": True,
            "protocol": 2,
            **_NO_SETINFO,
        }

    def _async_connection(self, addr: Addr) -> async_connection.Connection:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs = self._conn_kwargs(addr)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        if self.ssl:
            return async_connection.SSLConnection(**kwargs)
        return async_connection.Connection(**kwargs)

    def _sync_connection(self, addr: Addr) -> sync_connection.Connection:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs = self._conn_kwargs(addr)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        if self.ssl:
            return sync_connection.SSLConnection(**kwargs)
        return sync_connection.Connection(**kwargs)

    def _net_error(self, exc: BaseException, addr: Addr | None = None) -> BackendConnectionError:
        host, port = addr or self._seed
        what = "authentication failed" if isinstance(exc, AuthenticationError) else str(exc)
        what = what.replace(self._password, "***") if self._password else what
        return BackendConnectionError(f"Redis at {host}:{port} is unreachable: {what}")

    # -- keys and nodes -------------------------------------------------------------------
    def _key(self, topic: str) -> bytes:
        return self._prefix_b + topic.encode()

    def _node(self, key: bytes) -> Addr:
        if not self.cluster:
            return self._seed
        slot = key_slot(key)
        i = bisect_right(self._slots, slot) - 1
        if i >= 0:
            end, addr = self._slot_nodes[i]
            if slot <= end:
                return addr
        return self._seed

    async def _refresh_slots(self) -> None:
        """Re-read the cluster's slot map (at connect time and after a ``MOVED``)."""
        (reply,) = await self._admin_exec(self._seed, [("CLUSTER", "SLOTS")])
        self._set_slots(reply)

    def _refresh_slots_sync(self) -> None:
        link = _SyncLink(self, self._seed)
        try:
            (reply,) = _with_retry_sync(link, [["CLUSTER", "SLOTS"]], self)
        finally:
            link.close()
        self._set_slots(reply)

    def _set_slots(self, reply: Any) -> None:
        if isinstance(reply, ResponseError):
            raise reply
        ranges = sorted(
            (int(r[0]), int(r[1]), (_text(r[2][0]) or self._seed[0], int(r[2][1]))) for r in reply
        )
        self._slots = [r[0] for r in ranges]
        self._slot_nodes = [(r[1], r[2]) for r in ranges]

    def _primaries(self) -> list[Addr]:
        if not self.cluster:
            return [self._seed]
        return sorted({addr for _, addr in self._slot_nodes}) or [self._seed]

    async def _admin_exec(self, addr: Addr, cmds: Sequence[Sequence[Any]]) -> list[Any]:
        entry = self._admin.get(addr)
        if entry is None:
            entry = self._admin[addr] = (_Link(self, addr), asyncio.Lock())
        link, lock = entry
        async with lock:
            try:
                return await link.execute(cmds)
            except _NET_ERRORS:
                try:
                    return await link.execute(cmds)
                except _NET_ERRORS as exc:
                    raise self._net_error(exc, addr) from None

    async def _call(self, key: bytes, *cmds: Sequence[Any]) -> list[Any]:
        """Run ``cmds`` (about ``key``) on its node; errors stay values, MOVED is followed."""
        replies = await self._admin_exec(self._node(key), cmds)
        if self.cluster and any(_moved(r) for r in replies):
            await self._refresh_slots()
            replies = await self._admin_exec(self._node(key), cmds)
        return replies

    async def _one(self, key: bytes, *cmd: Any, topic: str = "", group: str = "") -> Any:
        (reply,) = await self._call(key, cmd)
        if isinstance(reply, ResponseError):
            raise _translate(reply, topic, group)
        return reply

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Check the server answers (within ~2 s) and find out whether it is a cluster.

        Raises:
            BackendConnectionError: naming host and port, if it cannot be reached.
        """
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + 0.5):
                _, server, info = await self._admin_exec(
                    self._seed, [("PING",), ("INFO", "server"), ("INFO", "cluster")]
                )
        except TimeoutError:
            raise BackendConnectionError(
                f"Redis at {self.host}:{self.port} is unreachable: no answer within "
                f"{CONNECT_TIMEOUT + 0.5:g} s"
            ) from None
        except BackendConnectionError as exc:
            raise BackendConnectionError(str(exc)) from None
        version = re.search(rb"redis_version:(\d+)\.(\d+)", server or b"")
        if version and (int(version[1]), int(version[2])) < (6, 2):
            raise BackendConnectionError(
                f"Redis at {self.host}:{self.port} is version {version[1].decode()}."
                f"{version[2].decode()}; echo_lab needs Redis >= 6.2 (XAUTOCLAIM)"
            )
        enabled = isinstance(info, bytes) and b"cluster_enabled:1" in info
        if self._cluster_option is None:
            self.cluster = enabled
        elif self._cluster_option and not enabled:
            raise BackendConnectionError(
                f"Redis at {self.host}:{self.port} is not a Redis Cluster node (cluster=True)"
            )
        if self.cluster:
            await self._refresh_slots()

    async def close(self) -> None:
        """Stop every cursor, flush queued appends and close every connection."""
        if self._closed:
            return
        for cursor in list(self._cursors):
            await cursor.close()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._closed = True
        for link, _ in self._admin.values():
            await link.close()
        for link in self._append_links.values():
            await link.close()
        self._admin.clear()
        self._append_links.clear()
        self._sync.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.url} backend is closed")

    # -- appending ------------------------------------------------------------------------
    def _xadds(self, key: bytes, entries: Sequence[Fields], maxlen: int) -> list[list[Any]]:
        head = ["XADD", key, "MAXLEN", "~" if maxlen > APPROX_TRIM_ABOVE else "=", maxlen, "*"]
        return [head + _flatten(fields) for fields in entries]

    async def append(self, topic: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        """Queue XADDs; every append queued in one loop iteration goes in one pipeline."""
        self._check_open()
        if not entries:
            return []
        key = self._key(topic)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((self._node(key), self._xadds(key, entries, maxlen), fut))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return _ids(await fut, topic)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                by_node: dict[Addr, list[Any]] = {}
                for item in batch:
                    by_node.setdefault(item[0], []).append(item)
                for addr, items in by_node.items():
                    await self._flush_node(addr, items)
        finally:
            self._flusher = None

    async def _flush_node(self, addr: Addr, items: list[Any]) -> None:
        link = self._append_links.get(addr)
        if link is None:
            link = self._append_links[addr] = _Link(self, addr)
        cmds = [c for item in items for c in item[1]]
        replies: list[Any] = []
        try:
            for i in range(0, len(cmds), _CHUNK):
                chunk = cmds[i : i + _CHUNK]
                try:
                    replies += await link.execute(chunk)
                except _NET_ERRORS:
                    try:
                        replies += await link.execute(chunk)
                    except _NET_ERRORS as exc:
                        raise self._net_error(exc, addr) from None
        except BaseException as exc:
            for _, _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if self.cluster and any(_moved(r) for r in replies):
            await self._refresh_slots()  # rare: re-send everything to the right nodes
            for _, item_cmds, fut in items:
                if not fut.done():
                    key = item_cmds[0][1]
                    try:
                        fut.set_result(await self._call(key, *item_cmds))
                    except Exception as exc:
                        fut.set_exception(exc)
            return
        i = 0
        for _, item_cmds, fut in items:
            n = len(item_cmds)
            if not fut.done():
                fut.set_result(replies[i : i + n])
            i += n

    def append_sync(self, topic: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        """Blocking twin of :meth:`append` for other threads (concurrent calls are pipelined
        together); it needs no hop to the runtime loop."""
        self._check_open()
        if not entries:
            return []
        key = self._key(topic)
        cmds = self._xadds(key, entries, maxlen)
        replies = self._sync.submit(self._node(key), cmds)
        if self.cluster and any(_moved(r) for r in replies):  # not executed: send again
            self._refresh_slots_sync()
            replies = self._sync.submit(self._node(key), cmds)
        return _ids(replies, topic)

    async def delete(self, topic: str) -> None:
        """Delete the stream key (its groups go with it)."""
        self._check_open()
        await self._one(self._key(topic), "DEL", self._key(topic), topic=topic)

    # -- reading --------------------------------------------------------------------------
    async def _last_id(self, key: bytes, topic: str) -> str:
        reply = await self._one(key, "XREVRANGE", key, "+", "-", "COUNT", 1, topic=topic)
        return reply[0][0].decode() if reply else "0-0"

    async def cursor(self, topic: str, start: Position) -> Cursor:
        """A fan-out cursor (``"$"`` resolved now to the stream's last id)."""
        self._check_open()
        after = _start_id(start)
        key = self._key(topic)
        if after is None:
            after = await self._last_id(key, topic)
        cursor = _RedisCursor(self, topic, key, after)
        self._cursors.add(cursor)
        return cursor

    async def group_cursor(
        self, topic: str, group: str, consumer: str, start: Position, claim_idle: float
    ) -> GroupCursor:
        """Join ``group`` (``XGROUP CREATE … MKSTREAM`` at ``start`` if new) as ``consumer``."""
        self._check_open()
        after = _start_id(start) or "$"
        key = self._key(topic)
        created, _ = await self._call(
            key,
            ("XGROUP", "CREATE", key, group, after, "MKSTREAM"),
            ("XGROUP", "CREATECONSUMER", key, group, consumer),
        )
        if isinstance(created, ResponseError) and not str(created).startswith("BUSYGROUP"):
            raise _translate(created, topic, group)
        cursor = _RedisGroupCursor(self, topic, key, group, consumer, claim_idle)
        self._cursors.add(cursor)
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
        """``XRANGE`` (``XREVRANGE`` if ``reverse``; ids validated like every backend does)."""
        if start != "-":
            parse_id(start)
        if end != "+":
            parse_id(end)
        if count is not None and count <= 0:
            return []
        key = self._key(topic)
        cmd: list[Any] = ["XREVRANGE", key, end, start] if reverse else ["XRANGE", key, start, end]
        if count is not None:
            cmd += ["COUNT", count]
        return _entries(await self._one(key, *cmd, topic=topic))

    # -- introspection --------------------------------------------------------------------
    async def topics(self) -> list[str]:
        """Stream keys under the prefix (``SCAN … TYPE stream`` on every primary)."""
        pattern = _glob_escape(self._prefix_b) + b"*"
        names: set[str] = set()
        cut = len(self._prefix_b)
        for addr in self._primaries():
            cursor: Any = b"0"
            while True:
                (reply,) = await self._admin_exec(
                    addr, [("SCAN", cursor, "MATCH", pattern, "COUNT", 1000, "TYPE", "stream")]
                )
                if isinstance(reply, ResponseError):
                    raise reply
                cursor, keys = reply
                names.update(k[cut:].decode("utf-8", "backslashreplace") for k in keys)
                if cursor in (b"0", 0, "0"):
                    break
        return sorted(names)

    async def info(self, topic: str) -> dict[str, Any]:
        """``XINFO STREAM``: ``{"topic", "length", "first_id", "last_id", "groups", "added"}``
        (length 0 if absent; ``added`` is ``entries-added``, ``None`` before Redis 7)."""
        (out,) = await self.infos([topic])
        return out

    async def infos(self, topics: Sequence[str]) -> list[dict[str, Any]]:
        """:meth:`info` of several topics: one pipeline of ``XINFO STREAM`` per node."""
        keys = [self._key(topic) for topic in topics]
        by_node: dict[Addr, list[int]] = {}
        for i, key in enumerate(keys):
            by_node.setdefault(self._node(key), []).append(i)
        replies: list[Any] = [None] * len(keys)
        for addr, indices in by_node.items():
            got = await self._admin_exec(addr, [("XINFO", "STREAM", keys[i]) for i in indices])
            for i, reply in zip(indices, got, strict=True):
                replies[i] = reply
        out = []
        for topic, key, reply in zip(topics, keys, replies, strict=True):
            if self.cluster and _moved(reply):  # the slot moved: ask its new node
                (reply,) = await self._call(key, ("XINFO", "STREAM", key))
            out.append(_stream_info(topic, reply))
        return out

    async def groups(self, topic: str) -> list[dict[str, Any]]:
        """``XINFO GROUPS``: ``name, consumers, pending, last_delivered_id, lag``."""
        key = self._key(topic)
        (reply,) = await self._call(key, ("XINFO", "GROUPS", key))
        if isinstance(reply, ResponseError):
            if "no such key" in str(reply).lower():
                return []
            raise _translate(reply, topic)
        out = []
        for row in reply:
            g = _pairs(row)
            last = _text(g.get("last-delivered-id"))
            lag = g.get("lag")
            if lag is None:  # Redis < 7, or a lag Redis cannot tell after deletions
                entries = await self._one(key, "XRANGE", key, f"({last}", "+", topic=topic)
                lag = len(entries)
            out.append(
                {
                    "name": _text(g.get("name")),
                    "consumers": int(g.get("consumers", 0)),
                    "pending": int(g.get("pending", 0)),
                    "last_delivered_id": last,
                    "lag": int(lag),
                }
            )
        return sorted(out, key=lambda g: g["name"])

    async def pending(self, topic: str, group: str) -> list[dict[str, Any]]:
        """``XPENDING`` detail: ``id, consumer, idle (s), deliveries`` of every pending entry."""
        key = self._key(topic)
        out: list[dict[str, Any]] = []
        start = "-"
        while True:
            rows = await self._one(
                key, "XPENDING", key, group, start, "+", _PENDING_PAGE, topic=topic, group=group
            )
            for id_, consumer, idle, deliveries in rows:
                out.append(
                    {
                        "id": id_.decode(),
                        "consumer": _text(consumer),
                        "idle": idle / 1000,
                        "deliveries": int(deliveries),
                    }
                )
            if len(rows) < _PENDING_PAGE:
                return out
            start = f"({out[-1]['id']}"

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        """``XACK``; return how many were pending."""
        if not ids:
            return 0
        key = self._key(topic)
        return int(await self._one(key, "XACK", key, group, *ids, topic=topic, group=group))

    async def claim(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        """``XCLAIM`` (counting a delivery); return the ids moved."""
        if not ids:
            return []
        key = self._key(topic)
        reply = await self._one(
            key, "XCLAIM", key, group, consumer, 0, *ids, topic=topic, group=group
        )
        return [id_.decode() for id_, flat in reply if flat is not None]


def _stream_info(topic: str, reply: Any) -> dict[str, Any]:
    """The Backend's info dict from an ``XINFO STREAM`` reply (or its error)."""
    if isinstance(reply, ResponseError):
        if "no such key" in str(reply).lower():
            return {
                "topic": topic,
                "length": 0,
                "first_id": None,
                "last_id": None,
                "groups": 0,
                "added": 0,
            }
        raise _translate(reply, topic)
    info = _pairs(reply)
    first, last = info.get("first-entry"), info.get("last-entry")
    added = info.get("entries-added")  # Redis >= 7
    return {
        "topic": topic,
        "length": int(info.get("length", 0)),
        "first_id": first[0].decode() if first else None,
        "last_id": last[0].decode() if last else None,
        "groups": int(info.get("groups", 0)),
        "added": None if added is None else int(added),
    }


def _ids(replies: list[Any], topic: str) -> list[str]:
    out = []
    for reply in replies:
        if isinstance(reply, Exception):
            raise _translate(reply, topic) if isinstance(reply, ResponseError) else reply
        out.append(reply.decode())
    return out


def _moved(reply: Any) -> bool:
    """True for a cluster redirection (redis-py parses ``MOVED``/``ASK`` into AskError)."""
    return isinstance(reply, AskError) or (
        isinstance(reply, ResponseError) and str(reply).startswith(("MOVED", "ASK "))
    )


def _translate(exc: ResponseError, topic: str = "", group: str = "") -> Exception:
    text = str(exc)
    # Redis >= 7 also wakes a blocked XREADGROUP with "UNBLOCKED the stream key (or consumer
    # group) no longer exists"; older ones answer the next read with NOGROUP.
    if text.startswith(("NOGROUP", "UNBLOCKED")):
        return GroupError(
            f"group {group!r} on topic {topic!r} no longer exists (the topic or group "
            f"was deleted): {text}"
        )
    if text.startswith("WRONGTYPE"):
        return ValueError(f"topic {topic!r} is a Redis key that is not a stream: {text}")
    return exc


def _glob_escape(raw: bytes) -> bytes:
    out = bytearray()
    for b in raw:
        if b in b"*?[]\\":
            out += b"\\"
        out.append(b)
    return bytes(out)


def _redact(url: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


def _block_ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class _RedisCursor(Cursor):
    """A fan-out cursor: ``XREAD COUNT n BLOCK ms`` from the last id seen, own connection."""

    def __init__(self, backend: RedisBackend, topic: str, key: bytes, last_id: str) -> None:
        self._backend = backend
        self.topic = topic
        self._key = key
        self.last_id = last_id
        self._link = _Link(backend, backend._node(key))
        self._closed = False

    async def read(self, count: int, timeout: float | None) -> list[RawEntry]:
        backend = self._backend
        deadline = None if timeout is None else time.monotonic() + timeout
        retried = False
        while not (self._closed or backend._closed):
            block = BLOCK_MAX if deadline is None else min(deadline - time.monotonic(), BLOCK_MAX)
            cmd: list[Any] = ["XREAD", "COUNT", count]
            if block > 0:
                cmd += ["BLOCK", _block_ms(block)]
            cmd += ["STREAMS", self._key, self.last_id]
            try:
                (reply,) = await self._link.execute((cmd,))
            except _NET_ERRORS as exc:
                if self._closed or backend._closed:
                    return []
                if not retried:  # a killed idle connection: try a fresh one at once
                    retried = True
                    continue
                raise backend._net_error(exc, self._link.addr) from None
            retried = False
            if isinstance(reply, ResponseError):
                if backend.cluster and _moved(reply):
                    await backend._refresh_slots()
                    await self._link.close()
                    self._link = _Link(backend, backend._node(self._key))
                    continue
                raise _translate(reply, self.topic)
            if reply:
                entries = _entries(reply[0][1])
                if entries:
                    self.last_id = entries[-1][0]
                    return entries
            if block <= 0 or (deadline is not None and time.monotonic() >= deadline):
                return []
        return []

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._link.close()
        self._backend._cursors.discard(self)


class _RedisGroupCursor(GroupCursor):
    """A group member: its own pending entries first, then ``XAUTOCLAIM`` of entries idle
    ``claim_idle`` (checked every fraction of it), then ``XREADGROUP >``; acks are sent
    pipelined with the next command."""

    def __init__(
        self,
        backend: RedisBackend,
        topic: str,
        key: bytes,
        group: str,
        consumer: str,
        claim_idle: float,
    ) -> None:
        self._backend = backend
        self.topic = topic
        self._key = key
        self.group = group
        self.consumer = consumer
        self.claim_idle = claim_idle
        self._idle_ms = int(claim_idle * 1000)
        self._group_args = ("XREADGROUP", "GROUP", group, consumer)
        self._claim_args = ("XAUTOCLAIM", key, group, consumer, self._idle_ms)
        self._poll = min(max(claim_idle / 4, 0.05), BLOCK_MAX)
        self._link = _Link(backend, backend._node(key))
        self._acks: list[str] = []
        self._own_after: str | None = "0-0"  # None once our own pending entries were re-read
        self._claim_from = "0-0"
        self._next_claim = 0.0
        self._closed = False

    async def _exec(self, *cmds: Sequence[Any]) -> list[Any]:
        """Run ``cmds`` after the queued acks, in one pipeline; translate errors (a cluster's
        ``MOVED`` is followed once: nothing was executed, so the pipeline is sent again)."""
        for attempt in range(2):
            n = len(self._acks)
            if n:
                full = (_pack_with_ids(("XACK", self._key, self.group), self._acks), *cmds)
            else:
                full = cmds
            replies = await self._link.execute(full)
            if self._backend.cluster and attempt == 0 and any(_moved(r) for r in replies):
                await self._backend._refresh_slots()
                await self._link.close()
                self._link = _Link(self._backend, self._backend._node(self._key))
                continue
            if n:
                del self._acks[:n]
                replies = replies[1:]
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise _translate(reply, self.topic, self.group)
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    async def _deliveries(self, start: str, end: str, count: int) -> dict[bytes, int]:
        (rows,) = await self._exec(
            ("XPENDING", self._key, self.group, start, end, count, self.consumer)
        )
        return {row[0]: int(row[3]) for row in rows}

    async def _own(self, count: int) -> list[GroupEntry]:
        """Re-read our own pending entries (after a start or a lost connection)."""
        after = self._own_after or "0-0"
        start = "-" if after == "0-0" else f"({after}"
        reply, rows = await self._exec(
            (*self._group_args, "COUNT", count, "STREAMS", self._key, after),
            ("XPENDING", self._key, self.group, start, "+", count, self.consumer),
        )
        items = reply[0][1] if reply else []
        if len(items) < count:
            self._own_after = None
        else:
            self._own_after = items[-1][0].decode()
        counts = {row[0]: int(row[3]) for row in rows}
        return self._batch(items, counts)

    def _batch(self, items: list[Any], counts: dict[bytes, int]) -> list[GroupEntry]:
        out = []
        for id_, flat in items:
            if flat is None:  # deleted or trimmed while pending: nothing left to deliver
                self._acks.append(id_.decode())
            else:
                out.append((id_.decode(), _fields(flat), counts.get(id_, 1)))
        return out

    async def _autoclaim(self, count: int) -> list[GroupEntry]:
        (reply,) = await self._exec((*self._claim_args, self._claim_from, "COUNT", count))
        nxt, items = reply[0], reply[1]
        self._claim_from = nxt.decode()
        now = time.monotonic()
        self._next_claim = now if self._claim_from != "0-0" else now + self._poll
        if not items:
            return []
        live = [item for item in items if item[1] is not None]
        counts = {}
        if live:
            counts = await self._deliveries(
                live[0][0].decode(), live[-1][0].decode(), len(items) + 100
            )
        return self._batch(items, counts)

    async def read(self, count: int, timeout: float | None) -> list[GroupEntry]:
        backend = self._backend
        deadline = None if timeout is None else time.monotonic() + timeout
        retried = False
        while not (self._closed or backend._closed):
            try:
                if self._own_after is not None:
                    batch = await self._own(count)
                    if batch:
                        return batch
                    continue
                now = time.monotonic()
                if now >= self._next_claim:
                    batch = await self._autoclaim(count)
                    if batch:
                        return batch
                    if self._next_claim <= now:
                        continue  # more of the pending list to scan
                block = min(BLOCK_MAX, max(self._next_claim - now, 0.001))
                if deadline is not None:
                    block = min(block, deadline - now)
                cmd: tuple[Any, ...] = (*self._group_args, "COUNT", count)
                if block > 0:
                    cmd += ("BLOCK", _block_ms(block))
                (reply,) = await self._exec((*cmd, "STREAMS", self._key, ">"))
            except _NET_ERRORS as exc:
                if self._closed or backend._closed:
                    return []
                # Entries handed to us by a read whose reply was lost are in our pending
                # list: re-read it once reconnected, so none waits for claim_idle.
                self._own_after = "0-0"
                if not retried:
                    retried = True
                    continue
                raise backend._net_error(exc, self._link.addr) from None
            retried = False
            if reply:
                return _new_entries(reply[0][1])
            if block <= 0 or (deadline is not None and time.monotonic() >= deadline):
                return []
        return []

    async def ack(self, ids: Sequence[str]) -> None:
        """Queue acks; they go out pipelined with the next read (or at close)."""
        self._acks.extend(ids)

    async def close(self) -> None:
        """Send queued acks and leave (pending entries stay, to be claimed)."""
        if self._closed:
            return
        self._closed = True
        acks, self._acks = self._acks, []
        await self._link.close()
        try:
            if acks and not self._backend._closed:
                await self._backend._call(self._key, ("XACK", self._key, self.group, *acks))
        except Exception as exc:  # they stay pending and are re-delivered: at-least-once
            logger.warning(
                "could not acknowledge %d entries of %s: %s", len(acks), self.topic, exc
            )
        finally:
            self._backend._cursors.discard(self)
