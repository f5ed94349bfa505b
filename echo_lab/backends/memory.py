"""In-process backend: bounded per-topic logs shared by every stream with the same name.

One lock guards a store, so appends may come from any thread (:meth:`append_sync`) while
cursors read on the runtime loop. A full log applies **back-pressure**: the oldest entries
are only trimmed once every live reader (fan-out cursor, or group with a live member) has
read them, so producers wait for slow subscribers instead of anything being lost or memory
growing without bound. A batch appended on the loop yields once to the readers it woke, so
they take it while it is still in the CPU's caches and a publishing loop cannot starve them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..codec import Fields
from ..errors import GroupError
from ..ids import MAX_SEQ, IdClock, Position, format_id, parse_id, parse_start
from .base import Backend, Cursor, GroupCursor, GroupEntry, RawEntry

__all__ = ["MemoryBackend"]

_ZERO = (0, 0)


class _Pending:
    __slots__ = ("consumer", "delivered_at", "deliveries", "fields", "pos")

    def __init__(self, pos: int, fields: Fields, consumer: str) -> None:
        self.pos = pos
        self.fields = fields
        self.consumer = consumer
        self.delivered_at = time.monotonic()
        self.deliveries = 1


class _Group:
    __slots__ = ("consumers", "last_id", "live", "pending", "pos")

    def __init__(self, pos: int, last_id: str) -> None:
        self.pos = pos  # absolute position of the next entry to hand out
        self.last_id = last_id
        self.pending: dict[str, _Pending] = {}
        self.consumers: set[str] = set()
        self.live: set[_MemoryGroupCursor] = set()


class _Log:
    """One topic's entries, addressed by absolute position (0 = the first entry ever).

    Ids and fields are kept in two parallel lists rather than as one tuple per entry: a
    tuple holding a dict stays tracked by the garbage collector forever, so a long log of
    them would make every full collection in the process walk it.
    """

    __slots__ = ("base", "clock", "fields", "groups", "ids", "start")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.fields: list[Fields] = []
        self.base = 0  # absolute position of ids[0] (a read prefix is dropped lazily)
        self.start = 0  # absolute position of the oldest retained entry
        self.clock = IdClock()
        self.groups: dict[str, _Group] = {}

    @property
    def end(self) -> int:
        """Absolute position after the newest entry."""
        return self.base + len(self.ids)

    def __len__(self) -> int:
        return self.base + len(self.ids) - self.start

    def position_after(self, key: tuple[int, int]) -> int:
        """Absolute position of the first retained entry with an id greater than ``key``."""
        return self.base + bisect_right(self.ids, key, self.start - self.base, key=parse_id)

    def last_id(self) -> str:
        """Id of the newest entry, or the clock's (what ``"$"`` means on an empty log)."""
        return self.ids[-1] if len(self) else f"{self.clock.ms}-{self.clock.seq}"

    def entries(self, pos: int, end: int) -> list[RawEntry]:
        """Entries from absolute ``pos`` to ``end`` as ``(id, fields)`` pairs."""
        i, j = pos - self.base, end - self.base
        return list(zip(self.ids[i:j], self.fields[i:j], strict=True))

    def trim_to(self, pos: int) -> None:
        self.start = pos
        drop = pos - self.base
        if drop > 4096 and drop * 2 > len(self.ids):
            del self.ids[:drop], self.fields[:drop]
            self.base = pos


class _Store:
    """The shared state of one ``memory://NAME``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.logs: dict[str, _Log] = {}
        self.readers: dict[str, set[_MemoryCursor]] = {}
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.space_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.sync_space_waiting = 0

    # -- wake-ups (called with the lock held) ---------------------------------------------
    def wake_readers(self, topic: str) -> None:
        # a reader woken from another thread may linger for more (see _MemoryCursor._linger)
        _wake_all(self.waiters.pop(topic, None), remote=True)

    def wake_producers(self, topic: str) -> None:
        _wake_all(self.space_waiters.pop(topic, None), remote=None)
        if self.sync_space_waiting:
            self.space.notify_all()

    # -- appending (called with the lock held) --------------------------------------------
    def room(self, topic: str, log: _Log, maxlen: int) -> int:
        """How many entries can be appended now, trimming what every live reader has read."""
        free = maxlen - len(log)
        if free > 0:
            return free
        oldest_unread = log.end
        for reader in self.readers.get(topic, ()):
            oldest_unread = min(oldest_unread, reader.position_in(log))
        for group in log.groups.values():
            if group.live:
                oldest_unread = min(oldest_unread, group.pos)
        return maxlen - (log.end - max(oldest_unread, log.start))

    def append_now(self, topic: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        """Append as many entries as there is room for; return their ids."""
        log = self.logs.get(topic)
        if log is None:
            log = self.logs[topic] = _Log()
        n = len(entries)
        retained = log.base + len(log.ids) - log.start
        if retained + n > maxlen:
            n = min(n, self.room(topic, log, maxlen))
            if n <= 0:
                return []
            overflow = retained + n - maxlen
            if overflow > 0:
                log.trim_to(log.start + overflow)
        ms, seq = log.clock.next_keys(n)
        if n == 1:  # single publishes: the common case from sync code
            ids = [f"{ms}-{seq}"]
            log.ids.append(ids[0])
            log.fields.append(entries[0])
        else:
            ids = list(map(f"{ms}-".__add__, map(str, range(seq, seq + n))))
            log.ids += ids
            log.fields += entries[:n]
        if topic in self.waiters:
            self.wake_readers(topic)
        return ids


def _resolve(fut: asyncio.Future[Any], value: Any = None) -> None:
    if not fut.done():
        fut.set_result(value)


def _wake_all(waiters: list[asyncio.Future[Any]] | None, remote: Any) -> None:
    """Resolve waiters: at once on the running loop, thread-safely (with ``remote``) elsewhere."""
    if waiters:
        running = asyncio._get_running_loop()
        for fut in waiters:
            if fut.get_loop() is running:
                _resolve(fut)
            else:
                fut.get_loop().call_soon_threadsafe(_resolve, fut, remote)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class MemoryBackend(Backend):
    """In-process logs; ``memory://NAME`` streams with the same NAME share them."""

    schemes = ("memory",)

    def __init__(self, name: str = "") -> None:
        with _STORES_LOCK:
            self._store = _STORES.setdefault(name, _Store())
        self._name = name
        self._cursors: set[_MemoryCursor | _MemoryGroupCursor] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBackend:
        """Build from ``memory://`` or ``memory://NAME`` (no options)."""
        if options:
            raise ValueError(f"unknown option(s) for memory://: {', '.join(sorted(options))}")
        parts = urlsplit(url)
        if parts.scheme != "memory" or parts.query or parts.fragment or parts.path.strip("/"):
            raise ValueError(
                f"malformed memory URL {url!r}: expected 'memory://' or 'memory://NAME'"
            )
        return cls(parts.netloc)

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.url} backend is closed")

    # -- writing --------------------------------------------------------------------------
    async def append(self, topic: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        self._check_open()
        store = self._store
        ids: list[str] = []
        while True:
            with store.lock:
                woke = topic in store.waiters
                added = store.append_now(topic, entries[len(ids) :], maxlen)
                ids += added
                if len(ids) == len(entries):
                    break
                if added:  # progress (a batch longer than maxlen): try again at once
                    continue
                fut = asyncio.get_running_loop().create_future()
                store.space_waiters.setdefault(topic, []).append(fut)
            await fut
        if woke and len(entries) > 1:  # a batch: let the readers it woke take it while hot
            await asyncio.sleep(0)
        return ids

    def append_sync(self, topic: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        """Append from a thread other than the runtime loop's, waiting for room if full."""
        self._check_open()
        store = self._store
        ids: list[str] = []
        with store.lock:
            while True:
                added = store.append_now(topic, entries[len(ids) :], maxlen)
                ids += added
                if len(ids) == len(entries):
                    return ids
                if added:  # progress (a batch longer than maxlen): try again at once
                    continue
                store.sync_space_waiting += 1
                try:
                    store.space.wait(0.5)
                finally:
                    store.sync_space_waiting -= 1
                self._check_open()

    async def delete(self, topic: str) -> None:
        store = self._store
        with store.lock:
            store.logs.pop(topic, None)  # its groups go with it: their cursors notice
            store.wake_readers(topic)
            store.wake_producers(topic)

    # -- reading --------------------------------------------------------------------------
    async def cursor(self, topic: str, start: Position) -> Cursor:
        self._check_open()
        after = parse_start(start)
        store = self._store
        with store.lock:
            log = store.logs.get(topic)
            if after is None:
                last_id = log.last_id() if log else "0-0"  # all of a future log is new
                cursor = _MemoryCursor(self, topic, last_id, log, log.end if log else 0)
            else:
                cursor = _MemoryCursor(self, topic, format_id(after), None, 0)
            store.readers.setdefault(topic, set()).add(cursor)
        self._cursors.add(cursor)
        return cursor

    async def group_cursor(
        self, topic: str, group: str, consumer: str, start: Position, claim_idle: float
    ) -> GroupCursor:
        self._check_open()
        after = parse_start(start)
        store = self._store
        with store.lock:
            log = store.logs.get(topic)
            if log is None:
                log = store.logs[topic] = _Log()
            grp = log.groups.get(group)
            if grp is None:
                if after is None:
                    grp = _Group(log.end, log.last_id())
                else:
                    grp = _Group(log.position_after(after), format_id(after))
                log.groups[group] = grp
            grp.consumers.add(consumer)
            cursor = _MemoryGroupCursor(self, topic, group, consumer, claim_idle, grp)
            grp.live.add(cursor)
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
        lo = _ZERO if start == "-" else parse_id(start)
        hi = (2**63, MAX_SEQ) if end == "+" else parse_id(end, default_seq=MAX_SEQ)
        with self._store.lock:
            log = self._store.logs.get(topic)
            if log is None:
                return []
            i = bisect_left(log.ids, lo, log.start - log.base, key=parse_id)
            j = bisect_right(log.ids, hi, i, key=parse_id)
            if count is not None and reverse:
                i = max(i, j - max(count, 0))
            elif count is not None:
                j = min(j, i + max(count, 0))
            entries = log.entries(log.base + i, log.base + j)
        if reverse:
            entries.reverse()
        return entries

    # -- introspection --------------------------------------------------------------------
    async def topics(self) -> list[str]:
        with self._store.lock:
            return sorted(self._store.logs)

    async def info(self, topic: str) -> dict[str, Any]:
        with self._store.lock:
            log = self._store.logs.get(topic)
            if log is None or not len(log):
                return {
                    "topic": topic,
                    "length": 0,
                    "first_id": None,
                    "last_id": None,
                    "groups": len(log.groups) if log else 0,
                    "added": log.end if log else 0,
                }
            return {
                "topic": topic,
                "length": len(log),
                "first_id": log.ids[log.start - log.base],
                "last_id": log.ids[-1],
                "groups": len(log.groups),
                "added": log.end,  # absolute positions: every entry ever appended
            }

    async def groups(self, topic: str) -> list[dict[str, Any]]:
        with self._store.lock:
            log = self._store.logs.get(topic)
            if log is None:
                return []
            return [
                {
                    "name": name,
                    "consumers": len(grp.consumers),
                    "pending": len(grp.pending),
                    "last_delivered_id": grp.last_id,
                    "lag": log.end - max(grp.pos, log.start),
                }
                for name, grp in sorted(log.groups.items())
            ]

    def _group(self, topic: str, group: str) -> _Group:
        log = self._store.logs.get(topic)
        grp = log.groups.get(group) if log else None
        if grp is None:
            raise GroupError(f"no group {group!r} on topic {topic!r}")
        return grp

    async def pending(self, topic: str, group: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._store.lock:
            grp = self._group(topic, group)
            rows = sorted(grp.pending.items(), key=lambda item: item[1].pos)
            return [
                {
                    "id": id_,
                    "consumer": p.consumer,
                    "idle": now - p.delivered_at,
                    "deliveries": p.deliveries,
                }
                for id_, p in rows
            ]

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        with self._store.lock:
            log = self._store.logs.get(topic)
            grp = log.groups.get(group) if log else None
            if grp is None:  # as XACK: nothing of an unknown group is pending
                return 0
            return sum(grp.pending.pop(i, None) is not None for i in ids)

    async def claim(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        now = time.monotonic()
        with self._store.lock:
            grp = self._group(topic, group)
            grp.consumers.add(consumer)
            moved = []
            for id_ in ids:
                p = grp.pending.get(id_)
                if p is not None:
                    p.consumer, p.delivered_at = consumer, now
                    p.deliveries += 1
                    moved.append(id_)
            return moved

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for cursor in list(self._cursors):
            await cursor.close()


async def _wait(store: _Store, topic: str, timeout: float | None) -> bool:
    """Wait (lock not held) until ``topic`` gets new entries or ``timeout`` passes; True if
    woken by an append from another thread."""
    fut = asyncio.get_running_loop().create_future()
    with store.lock:
        store.waiters.setdefault(topic, []).append(fut)
    try:
        if timeout is None:
            await fut
        else:
            async with asyncio.timeout(timeout):
                await fut
    except TimeoutError:
        pass
    finally:
        if not fut.done():
            fut.cancel()
    return not fut.cancelled() and fut.result() is True


#: Reader-side batching under load: at most this long an extra wait after a tiny batch.
LINGER = 0.0005
LINGER_BATCH = 16


class _MemoryCursor(Cursor):
    __slots__ = ("_backend", "_closed", "_woken", "last_id", "log", "pos", "topic")

    def __init__(
        self, backend: MemoryBackend, topic: str, last_id: str, log: _Log | None, pos: int
    ) -> None:
        self._backend = backend
        self.topic = topic
        self.last_id = last_id
        self.log = log  # the log ``pos`` is in (None until the topic is first read)
        self.pos = pos  # absolute position of the next entry to read
        self._closed = False
        self._woken = 0.0

    def position_in(self, log: _Log) -> int:
        """This reader's next position in ``log`` (a new or re-created log: after last_id)."""
        if log is self.log:
            return self.pos
        return log.position_after(parse_id(self.last_id))

    def _take(self, count: int) -> list[RawEntry]:
        store = self._backend._store
        with store.lock:
            log = store.logs.get(self.topic)
            if log is None:
                return []
            if log is not self.log:
                self.log, self.pos = log, self.position_in(log)
            base = log.base
            i = max(self.pos, log.start) - base
            j = min(i + count, len(log.ids))
            if j <= i:
                return []
            ids, fields = log.ids[i:j], log.fields[i:j]
            self.pos = base + j
            self.last_id = ids[-1]
            if store.space_waiters or store.sync_space_waiting:
                store.wake_producers(self.topic)
        return list(zip(ids, fields, strict=True))  # as _Log.entries, zipped outside the lock

    async def read(self, count: int, timeout: float | None) -> list[RawEntry]:
        # With timeout=None this awaits only plain futures (no asyncio.timeout, no current
        # task needed): the broker drives such reads without a task (broker/server.py _Sub).
        batch = self._take(count)
        if batch or self._closed or timeout == 0:
            return batch
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            remote = await _wait(self._backend._store, self.topic, remaining)
            batch = self._take(count)
            if batch:
                return await self._linger(batch, count) if remote else batch
        return []

    async def _linger(self, batch: list[RawEntry], count: int) -> list[RawEntry]:
        """Under a high message rate, wait a moment for more after a wake-up for a tiny batch.

        A producer in another thread wakes the loop once per wait; without this, each wake-up
        would carry a single message. Bounded extra latency (``LINGER``), only when busy.
        """
        now = time.monotonic()
        busy = now - self._woken < LINGER * 2
        self._woken = now
        if busy and len(batch) < LINGER_BATCH:
            await asyncio.sleep(LINGER)
            batch += self._take(count - len(batch))
        return batch

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        store = self._backend._store
        with store.lock:
            readers = store.readers.get(self.topic)
            if readers is not None:
                readers.discard(self)
                if not readers:
                    del store.readers[self.topic]
            store.wake_producers(self.topic)
            for fut in store.waiters.get(self.topic, ()):
                _resolve(fut)
        self._backend._cursors.discard(self)


class _MemoryGroupCursor(GroupCursor):
    __slots__ = (
        "_backend",
        "_closed",
        "_group",
        "_own_first",
        "claim_idle",
        "consumer",
        "group",
        "topic",
    )

    def __init__(
        self,
        backend: MemoryBackend,
        topic: str,
        group: str,
        consumer: str,
        claim_idle: float,
        grp: _Group,
    ) -> None:
        self._backend = backend
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self.claim_idle = claim_idle
        self._group = grp
        self._own_first = True
        self._closed = False

    def _take(self, count: int) -> tuple[list[GroupEntry], float | None]:
        """Return a batch and, if empty, how long until a pending entry becomes claimable."""
        store = self._backend._store
        now = time.monotonic()
        with store.lock:
            grp, log = self._group, store.logs.get(self.topic)
            if log is None or log.groups.get(self.group) is not grp:
                raise GroupError(
                    f"group {self.group!r} on topic {self.topic!r} no longer exists "
                    "(the topic was deleted)"
                )
            batch: list[GroupEntry] = []
            next_claim = None
            for id_, p in grp.pending.items():
                if len(batch) >= count:
                    break
                mine_at_start = self._own_first and p.consumer == self.consumer
                idle = now - p.delivered_at
                if mine_at_start or idle >= self.claim_idle:
                    p.consumer, p.delivered_at = self.consumer, now
                    p.deliveries += 1
                    batch.append((id_, p.fields, p.deliveries))
                else:
                    wait = self.claim_idle - idle
                    next_claim = wait if next_claim is None else min(next_claim, wait)
            self._own_first = False
            room = count - len(batch)
            if room > 0:
                pos = max(grp.pos, log.start)
                end = min(pos + room, log.end)
                if end > pos:
                    grp.pos = end
                    grp.last_id = log.ids[end - log.base - 1]
                    pending, consumer = grp.pending, self.consumer
                    for i, (id_, fields) in enumerate(log.entries(pos, end), pos):
                        pending[id_] = _Pending(i, fields, consumer)
                        batch.append((id_, fields, 1))
                    if store.space_waiters or store.sync_space_waiting:
                        store.wake_producers(self.topic)
            return batch, next_claim

    async def read(self, count: int, timeout: float | None) -> list[GroupEntry]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            batch, next_claim = self._take(count)
            if batch:
                return batch
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            if next_claim is not None:
                remaining = next_claim if remaining is None else min(remaining, next_claim)
            await _wait(self._backend._store, self.topic, remaining)
        return []

    async def ack(self, ids: Sequence[str]) -> None:
        with self._backend._store.lock:
            pending = self._group.pending
            for id_ in ids:
                pending.pop(id_, None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        store = self._backend._store
        with store.lock:
            self._group.live.discard(self)
            store.wake_producers(self.topic)
            for fut in store.waiters.get(self.topic, ()):
                _resolve(fut)
        self._backend._cursors.discard(self)
