"""Background consumers: :class:`Subscription` (what ``stream.on`` returns) and the
Echo-style class :class:`Consumer`, plus the delivery rules they share.

Delivery rules (the same on every backend):

* fan-out: a failing handler is retried at once, up to ``max_deliveries`` attempts, then the
  entry is copied to ``"<topic>.dead"`` with the error;
* groups: an entry is acknowledged after its handler returns (acks are batched); a failing
  entry stays pending and is re-delivered after ``claim_idle``; once it has been delivered
  ``max_deliveries`` times it is dead-lettered and acknowledged;
* an undecodable entry is counted, copied raw to ``"<topic>.dead"`` and skipped;
* nothing a handler does stops the consumer; read errors back off and retry.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar, Union

from .codec import Fields, dead_letter_fields, decode
from .errors import DecodeError, GroupError
from .ids import Position
from .message import Envelope, Message

if TYPE_CHECKING:
    from .backends.base import Cursor, GroupCursor
    from .stream import Stream

__all__ = ["Consumer", "ConsumerStats", "Handler", "Subscription"]

logger = logging.getLogger("echo_lab")
T = TypeVar("T")

Handler = Callable[[Envelope], Any] | Callable[[Envelope], Awaitable[Any]]

BATCH = 512
DEFAULT_CLAIM_IDLE = 30.0
DEFAULT_MAX_DELIVERIES = 3
_BACKOFF_MAX = 5.0


@dataclass
class ConsumerStats:
    """Counters of one consumer (read them any time; they are updated in place)."""

    received: int = 0  #: entries read from the backend
    handled: int = 0  #: handler calls that returned
    errors: int = 0  #: handler exceptions (each attempt counts)
    dead_lettered: int = 0  #: entries copied to ``<topic>.dead`` after failing
    undecodable: int = 0  #: entries that could not be decoded (also dead-lettered)
    read_errors: int = 0  #: failed reads (connection lost, group deleted …), retried
    last_id: str | None = None  #: id of the last entry read
    last_error: str | None = None  #: the most recent error, as text
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        """Handled messages per second since the start."""
        return self.handled / max(time.monotonic() - self.started, 1e-9)


def member_name() -> str:
    """A fresh consumer-group member name."""
    return f"c-{uuid.uuid4().hex[:10]}"


class Subscription:
    """A running background consumer of one or more topics (returned by ``stream.on``).

    Use :meth:`stop` (or ``await sub.astop()``) to end it; :attr:`stats` holds its counters.
    """

    def __init__(
        self,
        stream: Stream,
        topics: Sequence[str],
        handler: Handler,
        *,
        group: str | None = None,
        consumer: str | None = None,
        start: Position = "$",
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        batch: int = BATCH,
    ) -> None:
        if not topics:
            raise ValueError("subscribe to at least one topic")
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, got {max_deliveries}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if claim_idle < 0:
            raise ValueError(f"claim_idle must be >= 0, got {claim_idle}")
        self.stream = stream
        self.topics = list(topics)
        self.handler = handler
        self.group = group
        self.consumer = consumer or (member_name() if group else None)
        self.start = start
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self.batch = batch
        self.stats = ConsumerStats()
        self._is_async = _is_async(handler)
        self._worker = None if self._is_async else _Worker(f"echo-lab-handler:{','.join(topics)}")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._logged_traceback = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        grp = f", group={self.group!r}" if self.group else ""
        return f"<Subscription {self.topics}{grp} {state} handled={self.stats.handled}>"

    @property
    def running(self) -> bool:
        """True while at least one of its topic loops runs."""
        return any(not t.done() for t in self._tasks)

    # -- lifecycle (on the runtime loop) --------------------------------------------------
    async def _astart(self) -> Self:
        """Open every cursor (so ``"$"`` is resolved before returning), then start loops."""
        backend = self.stream.backend
        for topic in self.topics:
            if self.group is None:
                cursor: Cursor | GroupCursor = await backend.cursor(topic, self.start)
            else:
                cursor = await backend.group_cursor(
                    topic, self.group, self.consumer or "", self.start, self.claim_idle
                )
            self._tasks.append(asyncio.create_task(self._run(cursor), name=f"echo-lab:{topic}"))
        self.stream._subscriptions.add(self)
        return self

    async def astop(self) -> None:
        """Stop consuming (handlers already running finish first when called from one)."""
        self._stopping = True
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._worker is not None:
            self._worker.stop()
        self.stream._subscriptions.discard(self)

    def stop(self) -> None:
        """Stop consuming and release the cursors."""
        if self.stream.runtime.in_loop_thread():  # from an async handler: do not wait for it
            self._stopping = True
            asyncio.get_running_loop().create_task(self.astop())
            return
        self.stream.runtime.run(self.astop())

    # -- delivery -------------------------------------------------------------------------
    def _failed(self, env: Envelope, exc: BaseException, attempt: int) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "handler %s failed on %s %s (attempt %d of %d): %r",
            getattr(self.handler, "__qualname__", self.handler),
            env.topic,
            env.id,
            attempt,
            self.max_deliveries,
            exc,
            exc_info=not self._logged_traceback,
        )
        self._logged_traceback = True

    async def _process(self, topic: str, batch: list[Any], grouped: bool) -> _Outcome:
        """Decode and handle one batch; return the ids done with and the dead letters.

        For a sync handler this coroutine never suspends, so it is driven to completion in
        the subscription's worker thread (see :func:`_drive`) and a slow or blocking handler
        never stalls the runtime loop.
        """
        stats, handler, is_async = self.stats, self.handler, self._is_async
        done: list[str] = []
        dead: list[tuple[str, Fields, str, int]] = []
        stats.received += len(batch)
        stats.last_id = batch[-1][0]
        for entry in batch:
            if self._stopping:  # stopped mid-batch: the rest stays unhandled (and unacked)
                break
            id_, fields = entry[0], entry[1]
            deliveries = entry[2] if grouped else 1
            try:
                env = decode(topic, id_, fields)
            except DecodeError as exc:
                stats.undecodable += 1
                stats.last_error = str(exc)
                logger.warning("%s", exc)
                dead.append((id_, fields, str(exc), deliveries))
                done.append(id_)
                continue
            if deliveries > self.max_deliveries:  # its consumers kept dying on it
                error = f"delivered {deliveries} times, never acknowledged"
                dead.append((id_, fields, error, deliveries))
                done.append(id_)
                continue
            # fan-out retries at once; a group leaves the entry pending, to be re-delivered
            attempt = deliveries
            while True:
                try:
                    if is_async:
                        await handler(env)  # type: ignore[misc]
                    else:
                        handler(env)
                except Exception as exc:
                    self._failed(env, exc, attempt)
                    if attempt >= self.max_deliveries:
                        dead.append((id_, fields, repr(exc), attempt))
                        done.append(id_)
                        break
                    if grouped:
                        break
                    attempt += 1
                else:
                    stats.handled += 1
                    done.append(id_)
                    break
        return done, dead

    async def _run(self, cursor: Cursor | GroupCursor) -> None:
        """Read batches until stopped; handle them; dead-letter and acknowledge."""
        grouped = self.group is not None
        topic, delay = cursor.topic, 0.1
        backend, worker = self.stream.backend, self._worker
        try:
            while not self._stopping:
                try:
                    batch = await cursor.read(self.batch, None)
                    delay = 0.1
                except GroupError as exc:  # the topic or group was deleted: join it anew
                    delay = await self._read_failed(exc, delay)
                    await cursor.close()
                    cursor = await backend.group_cursor(
                        topic, self.group or "", self.consumer or "", "0", self.claim_idle
                    )
                    continue
                except (ConnectionError, OSError, TimeoutError) as exc:
                    delay = await self._read_failed(exc, delay)
                    continue
                if not batch:
                    continue
                if worker is None:
                    done, dead = await self._process(topic, batch, grouped)
                else:
                    done, dead = await worker.run(self._process(topic, batch, grouped))
                for id_, fields, error, n in dead:
                    letter = dead_letter_fields(fields, error, id_, n)
                    await backend.append(f"{topic}.dead", [letter], self.stream.maxlen)
                    self.stats.dead_lettered += 1
                if grouped and done:
                    await cursor.ack(done)  # type: ignore[union-attr]
        finally:
            await cursor.close()

    async def _read_failed(self, exc: Exception, delay: float) -> float:
        self.stats.read_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        logger.warning("reading %s failed, retrying in %.1f s: %s", self.topics, delay, exc)
        await asyncio.sleep(delay)
        return min(delay * 2, _BACKOFF_MAX)


_Outcome = tuple[list[str], list[tuple[str, Fields, str, int]]]


class _Worker:
    """A daemon thread that runs a subscription's sync handlers, one batch at a time."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            coro, future, loop = job
            try:
                result = _drive(coro)
            except BaseException as exc:  # handed back to the loop, never lost
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a never-suspending coroutine in the worker thread; await its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((coro, future, loop))
        return await future

    def stop(self) -> None:
        """Let the thread end after its current job (a blocked handler cannot be killed)."""
        self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to completion, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a sync handler's batch suspended; use an async handler to await")


def _is_async(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - a callable object's method
    )


def message_types(annotation: Any) -> list[type[Message]]:
    """The ``Message`` subclasses named by an annotation (a class or a union of classes)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in message_types(arg)]
    if isinstance(annotation, type) and issubclass(annotation, Message):
        return [annotation]
    return []


class Consumer:
    """Echo-style class consumer: subclass it and define ``on(self, msg)``.

    The topics are inferred from the annotation of ``msg`` (``Reading | Marco`` subscribes to
    both types' topics), or set ``topics = [...]`` on the class. ``on`` receives the message
    (a ``Message`` instance, or a dict); it may be ``async``.

    Example:
        >>> class Alerts(Consumer):
        ...     def on(self, msg: Reading | Marco): ...
        >>> c = Alerts(stream, group="alerts").start()  # doctest: +SKIP
    """

    topics: ClassVar[Sequence[str] | None] = None

    def __init__(
        self,
        stream: Stream,
        *,
        group: str | None = None,
        consumer: str | None = None,
        start: Position = "$",
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        batch: int = BATCH,
    ) -> None:
        self.stream = stream
        self._options = {
            "batch": batch,
            "group": group,
            "consumer": consumer,
            "start": start,
            "claim_idle": claim_idle,
            "max_deliveries": max_deliveries,
        }
        self.subscription: Subscription | None = None

    def on(self, msg: Any) -> Any:
        """Handle one message; override in a subclass."""
        raise NotImplementedError(f"{type(self).__name__} must define on(self, msg)")

    @classmethod
    def subscribed_topics(cls) -> list[str]:
        """Topics to consume: ``topics`` if set, else those of the ``on`` annotation."""
        if cls.topics:
            return list(cls.topics)
        hints = typing.get_type_hints(cls.on)
        params = [p for p in inspect.signature(cls.on).parameters if p != "self"]
        found = message_types(hints.get(params[0])) if params else []
        if not found:
            raise TypeError(
                f"{cls.__name__}: cannot infer topics; annotate on(self, msg: SomeMessage | "
                "Other) with Message classes, or set topics = [...] on the class"
            )
        return list(dict.fromkeys(t.topic for t in found))

    def start(self) -> Self:
        """Start consuming in the background; returns ``self``."""
        if self.subscription is not None and self.subscription.running:
            return self
        if _is_async(self.on):

            async def dispatch(env: Envelope) -> None:
                await self.on(env.data)

            handler: Handler = dispatch
        else:

            def handler(env: Envelope) -> None:
                self.on(env.data)

        self.subscription = self.stream.on(self.subscribed_topics(), handler, **self._options)
        return self

    def stop(self) -> None:
        """Stop consuming."""
        if self.subscription is not None:
            self.subscription.stop()

    @property
    def stats(self) -> ConsumerStats:
        """The running subscription's counters."""
        if self.subscription is None:
            return ConsumerStats()
        return self.subscription.stats

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
