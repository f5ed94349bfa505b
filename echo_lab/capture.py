"""Capture what flows through topics into pandas.

A :class:`Capture` reads raw entries with the backend's cursors on the runtime loop and keeps
them compact (see :mod:`echo_lab.frames`): per read batch (up to 2048 entries), one chunk. Full
segments (up to 65,536 rows) are parsed into Arrow tables by background threads at the lowest
CPU priority, which hold the GIL for almost nothing, so they use idle cores without slowing the
stream's consumers; :meth:`Capture.frame` parses what is left, one segment per core, and
converts to pandas once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pandas as pd
import pyarrow as pa

from .files import save_frame
from .frames import Chunk, Part, chunk_of, combine, parse_chunks
from .ids import Position, parse_start

if TYPE_CHECKING:
    from .backends.base import Cursor, RawEntry
    from .stream import Stream

__all__ = ["Capture"]

logger = logging.getLogger("echo_lab")
_BACKOFF_MAX = 5.0


def _lower_priority() -> None:
    """Parser threads yield to the runtime loop (consumers, handlers) when CPUs are busy."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


#: Background parsing of full segments: two threads, each parsing one segment at a time.
_PARSER = concurrent.futures.ThreadPoolExecutor(
    max_workers=2, thread_name_prefix="echo-lab-parse", initializer=_lower_priority
)
_QUEUED: set[concurrent.futures.Future[Any]] = set()


def _cancel_queued() -> None:
    """At interpreter exit, drop queued background parses instead of running them all."""
    for future in list(_QUEUED):
        future.cancel()


# runs before concurrent.futures joins its workers (threading runs these in reverse order)
getattr(threading, "_register_atexit", lambda f: None)(_cancel_queued)


#: Parsing for ``frame()``: the segments it needs, in parallel at normal priority.
_FRAME_POOL = concurrent.futures.ThreadPoolExecutor(
    max_workers=max(os.cpu_count() or 2, 2), thread_name_prefix="echo-lab-frame"
)


class _Segment:
    """Consecutive captured rows: chunks being filled, then parsed.

    A full segment is queued for a lowest-priority parser thread; whoever needs its rows
    first parses it (``frame()`` does not wait for a parse that has not started). Its chunks
    are released once it is parsed.
    """

    __slots__ = ("chunks", "first", "full", "future", "lock", "n", "parsed", "schema")

    def __init__(self, first: int, schema: list[pa.Schema | None]) -> None:
        self.first = first  # row number of its first row
        self.n = 0
        self.chunks: list[Chunk] = []
        self.schema = schema  # the capture's schema box, shared by its segments
        self.future: concurrent.futures.Future[Part] | None = None
        self.parsed: tuple[tuple[int, int], Part] | None = None  # ((first, n), part)
        self.lock = threading.Lock()
        self.full = False

    def submit(self) -> None:
        """Parse this full segment in the background (if nobody did yet)."""
        if self.future is None and self.parsed is None:
            self.future = future = _PARSER.submit(self._parse_full, False)
            _QUEUED.add(future)
            future.add_done_callback(_QUEUED.discard)

    def _parse_full(self, threads: bool) -> Part:
        with self.lock:
            if self.parsed is None or self.parsed[0] != (self.first, self.n):
                part = parse_chunks(self.chunks, threads, self.schema)
                self.parsed = ((self.first, self.n), part)
                self.chunks = []
            return self.parsed[1]

    def part(self, threads: bool = True) -> Part:
        """The rows of a full segment, parsed (if still queued, parsed here, now)."""
        future = self.future
        if future is None or future.cancel():  # not started: do not wait for the background
            return self._parse_full(threads)
        return future.result()

    def open_part(self, first: int, n: int, chunks: list[Chunk], threads: bool = True) -> Part:
        """The rows of the open segment as they were (``first``, ``n``, ``chunks``)."""
        with self.lock:
            cached = self.parsed
            if cached is not None and cached[0] == (first, n):
                return cached[1]
            part = parse_chunks(chunks, threads, self.schema)
            self.parsed = ((first, n), part)
            return part


def _slice(part: Part, start: int) -> Part:
    if not start:
        return part
    if isinstance(part, pa.Table):
        return part.slice(start)
    return part.iloc[start:].reset_index(drop=True)


class Capture:
    """Records the messages of one or more topics in the background.

    Create it with ``stream.capture(topics, start="$", max_rows=1_000_000)``. It keeps at most
    ``max_rows`` rows (the newest: a ring, bounded memory) and stops by itself after ``n``
    messages or ``timeout`` seconds if given. Use it as a context manager to stop it on exit.

    Rows are stored compactly (no per-message objects) and parsed into Arrow tables segment
    by segment: in the background on idle cores, else by :meth:`frame`, in parallel.
    :meth:`since` and :attr:`count` let a live view read only the new rows.

    Example:
        >>> with stream.capture("sensors", n=100) as cap:  # doctest: +SKIP
        ...     cap.wait()
        >>> cap.frame().groupby("sensor").temp.mean()  # doctest: +SKIP

    Attributes:
        stream: the stream it reads.
        topics: the captured topics.
        max_rows: how many rows are kept at most.
        undecodable: entries skipped because they could not be decoded.

    Args:
        stream: the stream to read.
        topics: one topic or several.
        start: ``"$"`` (new messages, default), ``"0"`` (all retained), an id or a datetime.
        max_rows: rows kept at most (the newest).
        n: stop after this many messages.
        timeout: stop after this many seconds.
        batch: entries read at a time.
    """

    def __init__(
        self,
        stream: Stream,
        topics: str | Sequence[str],
        *,
        start: Position = "$",
        max_rows: int = 1_000_000,
        n: int | None = None,
        timeout: float | None = None,
        batch: int = 2048,
    ) -> None:
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise ValueError(f"capture needs one or more topic names, got {topics!r}")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be a positive integer or None, got {n!r}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        parse_start(start)
        self.stream = stream
        self.topics = topic_list
        self.start = start
        self.max_rows = max_rows
        self.n = n
        self.timeout = timeout
        self.batch = batch
        self.undecodable = 0
        self._schema: list[pa.Schema | None] = [None]
        self._segment_rows = min(65_536, max(max_rows // 8, 2048))
        self._segments: collections.deque[_Segment] = collections.deque(
            [_Segment(0, self._schema)]
        )
        self._skip = 0  # rows of the first segment dropped by the ring
        self._count = 0  # rows captured since the start
        self._lock = threading.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._remaining = 0
        self._stopping = False
        self._done = threading.Event()
        self._started = time.monotonic()
        self._ended: float | None = None
        stream.runtime.run(self._astart())

    # -- lifecycle ------------------------------------------------------------------------------
    async def _astart(self) -> None:
        backend = self.stream.backend
        cursors = [await backend.cursor(topic, self.start) for topic in self.topics]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self._started = time.monotonic()
        for cursor in cursors:
            task = asyncio.create_task(
                self._run(cursor, deadline), name=f"echo-lab-capture:{cursor.topic}"
            )
            self._tasks.append(task)
        self._remaining = len(self._tasks)
        self.stream._subscriptions.add(self)  # type: ignore[arg-type]  # stopped on close

    async def _run(self, cursor: Cursor, deadline: float | None) -> None:
        delay = 0.1
        try:
            while not self._stopping:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    break
                try:
                    batch = await cursor.read(self.batch, wait)
                    delay = 0.1
                except (ConnectionError, OSError, TimeoutError) as exc:
                    logger.warning("capture of %s: read failed, retrying: %s", cursor.topic, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX)
                    continue
                if not batch:
                    if self.stream._closed:
                        break
                    if wait is None:  # a reader woken without entries: do not spin
                        await asyncio.sleep(0.01)
                    continue
                if self.n is not None:
                    batch = batch[: self.n - self._count]
                if self._add(cursor.topic, batch):
                    break
        finally:
            await cursor.close()
            self._remaining -= 1
            if self._remaining == 0 or (self.n is not None and self._count >= self.n):
                self._finish()

    def _add(self, topic: str, batch: Sequence[RawEntry]) -> bool:
        """Store a batch; return True when the capture has its ``n`` rows."""
        chunk, bad = chunk_of(topic, batch)
        self.undecodable += bad
        if chunk is not None:
            with self._lock:
                seg = self._segments[-1]
                seg.chunks.append(chunk)
                seg.n += chunk.n
                self._count += chunk.n
                if seg.n >= self._segment_rows:
                    seg.full = True
                    seg.submit()
                    self._segments.append(_Segment(self._count, self._schema))
                self._trim()
        return self.n is not None and self._count >= self.n

    def _trim(self) -> None:
        """Drop the oldest rows beyond ``max_rows`` (called with the lock held)."""
        segments = self._segments
        excess = self._count - segments[0].first - self._skip - self.max_rows
        while excess > 0:
            head = segments[0]
            left = head.n - self._skip
            if len(segments) > 1 and left <= excess:
                segments.popleft()
                self._skip = 0
                excess -= left
                if head.future is not None:
                    head.future.cancel()
            else:
                self._skip += excess
                excess = 0
        head = segments[0]
        if not head.full and self._skip >= 4 * self.batch:  # the open one: drop chunks
            while head.chunks and head.chunks[0].n <= self._skip:
                dropped = head.chunks.pop(0)
                head.first += dropped.n
                head.n -= dropped.n
                self._skip -= dropped.n

    def _finish(self) -> None:
        if self._ended is None:
            self._ended = time.monotonic()
        self._stopping = True
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.stream._subscriptions.discard(self)  # type: ignore[arg-type]
        self._done.set()

    async def astop(self) -> None:
        """Stop recording (async twin of :meth:`stop`); the rows stay available."""
        self._stopping = True
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._finish()

    def stop(self) -> Self:
        """Stop recording; the rows captured so far stay available. Returns ``self``."""
        if self.stream.runtime.in_loop_thread():
            self._stopping = True
            asyncio.get_running_loop().create_task(self.astop())
        elif not self._done.is_set():
            self.stream.runtime.run(self.astop())
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the capture ends (``n`` rows, its ``timeout``, or :meth:`stop`).

        Returns:
            True if it ended, False if ``timeout`` seconds passed first.
        """
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        """True while recording."""
        return not self._done.is_set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counters ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Rows kept now (at most ``max_rows``)."""
        with self._lock:
            return self._count - self._segments[0].first - self._skip

    @property
    def count(self) -> int:
        """Rows captured since the start, including those the ring dropped (a row counter:
        row ``k`` is the ``k``-th captured message, counting from 0)."""
        return self._count

    def memory_usage(self) -> int:
        """Bytes held by the rows kept (the messages as read, or their parsed tables),
        counting message bytes it shares with an in-process backend's log as its own."""
        with self._lock:
            segments = list(self._segments)
        total = 0
        for seg in segments:
            parsed = seg.parsed
            if seg.full and parsed is not None:
                part = parsed[1]
                total += (
                    part.nbytes
                    if isinstance(part, pa.Table)
                    else int(part.memory_usage(deep=True).sum())
                )
                continue
            for c in list(seg.chunks):
                total += sys.getsizeof(c.ids) + sys.getsizeof(c.types or ())
                data = c.data
                if isinstance(data, list):
                    total += sys.getsizeof(data) + sum(map(sys.getsizeof, data))
                else:
                    total += sys.getsizeof(data)
        return total

    @property
    def elapsed(self) -> float:
        """Seconds recorded (up to now, or to the end of the capture)."""
        end = self._ended if self._ended is not None else time.monotonic()
        return max(end - self._started, 0.0)

    @property
    def rate(self) -> float:
        """Messages captured per second since the start (to the end, once stopped)."""
        return self._count / max(self.elapsed, 1e-9)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Capture {self.topics} {state} rows={len(self)} rate={self.rate:.1f}/s>"

    # -- frames -------------------------------------------------------------------------------
    def since(self, k: int) -> pd.DataFrame:
        """Rows number ``k`` and later (see :attr:`count`) that are still kept.

        The frame's ``attrs["next_row"]`` is the number of the row after its last one, so a
        live view reads only new rows with ``new = cap.since(k); k = new.attrs["next_row"]``
        (rows the ring dropped meanwhile are skipped).
        """
        with self._lock:
            end = self._count
            segments = list(self._segments)
            start = max(k, segments[0].first + self._skip)
            picked = [
                (s, s.first, s.n, None if s.full else list(s.chunks))
                for s in segments
                if s.first + s.n > start and s.n
            ]
        threads = len(picked) == 1  # one segment: Arrow's threads; several: one per thread

        def parse(item: tuple[_Segment, int, int, list[Chunk] | None]) -> Part:
            seg, first, n, chunks = item
            part = (
                seg.part(threads) if chunks is None else seg.open_part(first, n, chunks, threads)
            )
            return _slice(part, max(start - first, 0))

        parts = [parse(picked[0])] if threads else list(_FRAME_POOL.map(parse, picked))
        frame = combine(parts)
        frame.attrs["next_row"] = end
        return frame

    def frame(self) -> pd.DataFrame:
        """The rows kept now as a DataFrame: ``id``, ``ts`` (``datetime64[ns, UTC]``),
        ``topic``, ``type``, then one column per data field (nested ones as ``a.b``)."""
        return self.since(0)

    def tail(self, n: int = 5) -> pd.DataFrame:
        """The newest ``n`` rows (``attrs["next_row"]`` as in :meth:`since`)."""
        return self.since(max(self._count - max(n, 0), 0))

    def plot(self, field: str, by: str | None = None, window: float = 60.0, **kw: Any) -> Any:
        """A live line chart of ``field`` (one line per value of ``by``) over the last
        ``window`` seconds: an :class:`echo_lab.widgets.LivePlot` (bqplot)."""
        from .widgets import LivePlot

        return LivePlot(self, field, by=by, window=window, **kw)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`frame` to ``path``: Parquet, CSV or JSON Lines by suffix
        (``.parquet``/``.pq``, ``.csv``, ``.jsonl``/``.ndjson``); return the path."""
        return save_frame(self.frame(), path)
