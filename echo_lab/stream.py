"""The user's handle on a backend: publish, consume and introspect, sync and async.

Every operation is written once as a coroutine that runs on the runtime loop; the public
sync method and its ``a``-prefixed async twin are both made from it by :func:`_twins`, so
the sync/async bridging lives in :mod:`echo_lab.runtime` and nowhere else.
"""

from __future__ import annotations

import functools
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar

from .backends.base import Backend
from .codec import Fields, dead_letter_fields, decode, decode_many, encode_many, get_codec
from .consumer import (
    BATCH,
    DEFAULT_CLAIM_IDLE,
    DEFAULT_MAX_DELIVERIES,
    Handler,
    Subscription,
    member_name,
)
from .errors import DecodeError
from .ids import Position, parse_start
from .message import Envelope, Message
from .runtime import Runtime, get_runtime

if TYPE_CHECKING:
    import pandas as pd

    from .capture import Capture

__all__ = ["DEFAULT_MAXLEN", "Producer", "Stream"]

DEFAULT_MAXLEN = 100_000

P = ParamSpec("P")
T = TypeVar("T")


def _sync(impl: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    @functools.wraps(impl)
    def method(self: Stream, *args: Any, **kwargs: Any) -> T:
        return self.runtime.run(impl(self, *args, **kwargs))

    method.__name__ = method.__qualname__ = impl.__name__.lstrip("_")
    return method


def _async(impl: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., Coroutine[Any, Any, T]]:
    @functools.wraps(impl)
    async def method(self: Stream, *args: Any, **kwargs: Any) -> T:
        return await self.runtime.hop(impl(self, *args, **kwargs))

    method.__name__ = method.__qualname__ = "a" + impl.__name__.lstrip("_")
    return method


def _split(topic: str | Message, data: Any) -> tuple[str, Any]:
    if isinstance(topic, Message):
        if data is not None:
            raise TypeError("publish(message) takes no data argument")
        return topic.topic, topic
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"topic must be a non-empty string or a Message, got {topic!r}")
    if data is None:
        raise TypeError(f"publish({topic!r}, data): data is missing")
    return topic, data


class Stream:
    """A connection to a stream backend, usable from sync code, async code and notebooks.

    Create one with :func:`echo_lab.connect` (or ``Stream(backend)`` for a custom backend).
    Every sync method has an ``a``-prefixed async twin (``publish`` / ``apublish``).
    """

    def __init__(
        self, backend: Backend, *, codec: str = "json", maxlen: int = DEFAULT_MAXLEN
    ) -> None:
        if not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer, got {maxlen!r}")
        self.backend = backend
        self.codec = codec
        self._encode = get_codec(codec)
        self.maxlen = maxlen
        self.runtime: Runtime = get_runtime()
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<echo_lab.Stream {self.backend.url} codec={self.codec}{state}>"

    # -- lifecycle ------------------------------------------------------------------------
    async def _connect(self) -> Self:
        await self.backend.connect()
        return self

    async def _close(self) -> None:
        """Stop every subscription of this stream and close the backend."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            await sub.astop()
        await self.backend.close()

    close = _sync(_close)
    aclose = _async(_close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- publishing -----------------------------------------------------------------------
    async def _publish(
        self, topic: str | Message, data: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> str:
        """Publish one message; return its id.

        ``publish("sensors", {"temp": 21.5})`` or ``publish(Reading("s1", 21.5))`` (topic
        from the class). Raises ``TypeError`` (``EncodeError``) naming what cannot be encoded.
        """
        name, payload = _split(topic, data)
        fields = self._encode(name, payload, headers)
        return (await self.backend.append(name, [fields], self.maxlen))[0]

    apublish = _async(_publish)

    def publish(
        self, topic: str | Message, data: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> str:
        """Publish one message; return its id (see :meth:`apublish`)."""
        append_sync = self.backend.append_sync
        if append_sync is not None and not self.runtime.in_loop_thread():
            name, payload = _split(topic, data)
            return append_sync(name, [self._encode(name, payload, headers)], self.maxlen)[0]
        return self.runtime.run(self._publish(topic, data, headers=headers))

    async def _publish_many(
        self, topic: str, rows: Iterable[Any], *, headers: Mapping[str, str] | None = None
    ) -> list[str]:
        """Publish many messages to one topic in batches (pipelined); return their ids."""
        fields = self._encode_many(topic, rows, headers)
        return await self.backend.append(topic, fields, self.maxlen)

    apublish_many = _async(_publish_many)

    def publish_many(
        self, topic: str, rows: Iterable[Any], *, headers: Mapping[str, str] | None = None
    ) -> list[str]:
        """Publish many messages to one topic in batches; return their ids."""
        append_sync = self.backend.append_sync
        if append_sync is not None and not self.runtime.in_loop_thread():
            return append_sync(topic, self._encode_many(topic, rows, headers), self.maxlen)
        return self.runtime.run(self._publish_many(topic, rows, headers=headers))

    def _encode_many(
        self, topic: str, rows: Iterable[Any], headers: Mapping[str, str] | None
    ) -> list[Fields]:
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty string, got {topic!r}")
        return encode_many(self._encode, topic, rows, headers)

    # -- consuming ------------------------------------------------------------------------
    async def _on(
        self,
        topic: str | Sequence[str],
        handler: Handler,
        *,
        group: str | None = None,
        consumer: str | None = None,
        start: Position = "$",
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        batch: int = BATCH,
    ) -> Subscription:
        """Call ``handler(envelope)`` in the background for every message of ``topic``.

        ``handler`` may be sync (run in the subscription's own thread, so it may block) or
        async (run on the runtime loop). With ``group=``, members sharing the group split the
        messages (work queue). ``batch`` is how many messages one read fetches: a work queue
        with slow handlers splits more evenly with a small batch (``1``: one at a time).
        Returns a :class:`Subscription` (``stop()``, ``stats``).
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        parse_start(start)
        topics = [topic] if isinstance(topic, str) else list(topic)
        sub = Subscription(
            self,
            topics,
            handler,
            group=group,
            consumer=consumer,
            start=start,
            claim_idle=claim_idle,
            max_deliveries=max_deliveries,
            batch=batch,
        )
        return await sub._astart()

    on = _sync(_on)
    aon = _async(_on)

    async def subscribe(
        self,
        topic: str,
        *,
        start: Position = "$",
        group: str | None = None,
        consumer: str | None = None,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        timeout: float | None = None,
    ) -> AsyncIterator[Envelope]:
        """Async iterator over the messages of ``topic`` (ends after ``timeout`` s idle).

        In a group, a message is acknowledged when the loop body that received it returns.
        """
        batches = self._batches(topic, start, group, consumer, claim_idle, timeout)
        hop = self.runtime.hop
        try:
            async for batch in batches:
                for entry in batch:  # decoded one by one: a decoded batch would churn the GC
                    try:
                        env = decode(topic, entry[0], entry[1])
                    except DecodeError as exc:
                        await hop(self._dead_letter(topic, entry, exc))
                        continue
                    yield env
        finally:
            await batches.aclose()

    def iter(
        self,
        topic: str,
        *,
        start: Position = "$",
        group: str | None = None,
        consumer: str | None = None,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        timeout: float | None = None,
    ) -> Iterator[Envelope]:
        """Sync iterator over the messages of ``topic`` (ends after ``timeout`` s idle)."""
        batches = self._batches(topic, start, group, consumer, claim_idle, timeout)
        run = self.runtime.run
        try:
            while (batch := run(_next_or_none(batches))) is not None:
                for entry in batch:
                    try:
                        env = decode(topic, entry[0], entry[1])
                    except DecodeError as exc:
                        run(self._dead_letter(topic, entry, exc))
                        continue
                    yield env
        finally:
            run(batches.aclose())

    async def _take(
        self,
        topic: str,
        n: int,
        timeout: float | None = None,
        *,
        start: Position = "$",
        group: str | None = None,
        consumer: str | None = None,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
    ) -> list[Envelope]:
        """Return the next ``n`` messages of ``topic``, or what arrived within ``timeout`` s."""
        out: list[Envelope] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        batches = self._batches(topic, start, group, consumer, claim_idle, timeout, n, deadline)
        try:
            async for batch in batches:
                decoded, bad = decode_many(topic, batch)
                for id_, fields, error in bad:
                    await self._dead_letter(topic, (id_, fields), error)
                out += decoded
                if len(out) >= n:
                    break
        finally:
            await batches.aclose()
        return out

    take = _sync(_take)
    atake = _async(_take)

    async def _batches(
        self,
        topic: str,
        start: Position,
        group: str | None,
        consumer: str | None,
        claim_idle: float,
        timeout: float | None,
        limit: int | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[list[Sequence[Any]]]:
        """Raw batches of ``topic`` (``(id, fields, ...)`` entries); reads hop to the runtime
        loop. With a group, a batch is acknowledged when the next one is asked for (its
        messages were processed). ``timeout`` is the idle time that ends it; ``deadline``
        (monotonic) an overall end."""
        hop = self.runtime.hop
        parse_start(start)
        if group is None:
            cursor: Any = await hop(self.backend.cursor(topic, start))
        else:
            cursor = await hop(
                self.backend.group_cursor(
                    topic, group, consumer or member_name(), start, claim_idle
                )
            )
        unacked: list[str] = []
        got = 0
        try:
            while True:
                wait = timeout
                if deadline is not None:
                    wait = max(0.0, deadline - time.monotonic())
                count = BATCH if limit is None else max(1, min(BATCH, limit - got))
                if unacked:
                    await hop(cursor.ack(unacked))
                    unacked = []
                batch = await hop(cursor.read(count, wait))
                if not batch:
                    return
                if group is not None:
                    unacked = [item[0] for item in batch]
                got += len(batch)
                yield batch
        finally:
            if unacked:
                await hop(cursor.ack(unacked))
            await hop(cursor.close())

    async def _dead_letter(self, topic: str, entry: Sequence[Any], error: object) -> None:
        """Copy an undecodable entry raw to ``"<topic>.dead"`` with the error."""
        letter = dead_letter_fields(entry[1], str(error), entry[0], 1)
        await self.backend.append(f"{topic}.dead", [letter], self.maxlen)

    # -- history and introspection ----------------------------------------------------------
    async def _history(
        self, topic: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Envelope]:
        """Retained messages with ``start <= id <= end`` (``"-"``/``"+"`` for the ends)."""
        out = []
        for id_, fields in await self.backend.range(topic, start, end, count):
            try:
                out.append(decode(topic, id_, fields))
            except DecodeError:
                continue
        return out

    history = _sync(_history)
    ahistory = _async(_history)

    async def _topics(self) -> list[str]:
        """Names of the topics, sorted."""
        return await self.backend.topics()

    topics = _sync(_topics)
    atopics = _async(_topics)

    async def _info(self, topic: str) -> dict[str, Any]:
        """``{"topic", "length", "first_id", "last_id", "groups"}`` of one topic."""
        return await self.backend.info(topic)

    info = _sync(_info)
    ainfo = _async(_info)

    async def _groups(self, topic: str) -> list[dict[str, Any]]:
        """The topic's consumer groups: ``name, consumers, pending, last_delivered_id, lag``."""
        return await self.backend.groups(topic)

    groups = _sync(_groups)
    agroups = _async(_groups)

    async def _pending(self, topic: str, group: str) -> list[dict[str, Any]]:
        """A group's unacknowledged messages: ``id, consumer, idle, deliveries``."""
        return await self.backend.pending(topic, group)

    pending = _sync(_pending)
    apending = _async(_pending)

    async def _ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledge messages of a group by id; return how many were pending."""
        return await self.backend.ack(topic, group, list(ids))

    ack = _sync(_ack)
    aack = _async(_ack)

    async def _claim(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        """Give pending messages to another group member; return the ids moved."""
        return await self.backend.claim(topic, group, consumer, list(ids))

    claim = _sync(_claim)
    aclaim = _async(_claim)

    async def _delete(self, topic: str) -> None:
        """Delete a topic with its messages and groups."""
        await self.backend.delete(topic)

    delete = _sync(_delete)
    adelete = _async(_delete)

    # -- analysis and widgets (imported lazily: nothing below imports them) -------------------
    def capture(self, topics: str | Sequence[str], **options: Any) -> Capture:
        """Record messages of ``topics`` in the background (a :class:`~echo_lab.Capture`)."""
        from .capture import Capture

        return Capture(self, topics, **options)

    def frame(
        self, topic: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> pd.DataFrame:
        """The retained history of ``topic`` as a pandas DataFrame."""
        from .frames import frame_of

        return frame_of(self.history(topic, start, end, count))

    def monitor(self, **options: Any) -> Any:
        """A live per-topic traffic widget (ipywidgets)."""
        from .widgets import Monitor

        return Monitor(self, **options)

    def explore(self, **options: Any) -> Any:
        """A widget to browse topics, groups, pending and dead letters."""
        from .widgets import Explorer

        return Explorer(self, **options)


async def _next_or_none(batches: AsyncIterator[T]) -> T | None:
    return await anext(batches, None)


class Producer:
    """Echo-style producer bound to a stream: ``Producer(stream).publish(Reading(...))``."""

    def __init__(self, stream: Stream, *, headers: Mapping[str, str] | None = None) -> None:
        self.stream = stream
        self.headers = dict(headers) if headers else None

    def publish(self, message: Message | str, data: Any = None) -> str:
        """Publish a typed message (to its class's topic) or ``(topic, dict)``; return the id."""
        return self.stream.publish(message, data, headers=self.headers)

    async def apublish(self, message: Message | str, data: Any = None) -> str:
        """Async twin of :meth:`publish`."""
        return await self.stream.apublish(message, data, headers=self.headers)

    def publish_many(self, topic: str, rows: Iterable[Any]) -> list[str]:
        """Publish many messages to one topic; return their ids."""
        return self.stream.publish_many(topic, rows, headers=self.headers)
