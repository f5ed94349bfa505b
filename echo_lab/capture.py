"""Capture what flows through topics into pandas, and the stream's state as DataFrames.

A :class:`Capture` reads raw entries with the backend's cursors on the runtime loop and keeps
them compact: per read batch (up to 2048 entries), one buffer of ids and one buffer of the
messages' JSON, one per line. No envelope, dict or DataFrame is made per message. Full
segments (up to 65,536 rows) are parsed into Arrow tables with Arrow's JSON reader (nested
objects become ``a.b`` columns, missing fields nulls, numbers stay numeric) by background
threads at the lowest CPU priority, which hold the GIL for almost nothing, so they use idle
cores without slowing the stream's consumers; :meth:`Capture.frame` parses what is left, one
segment per core, and converts to pandas once.
What Arrow cannot type (a field that is a number in one message and a string in another)
falls back to orjson plus ``DataFrame.from_records`` (an object column).

Frames have the columns ``id``, ``ts`` (``datetime64[ns, UTC]``), ``topic``, ``type``, then one
column per data field. A data field called like one of those four becomes ``data.<name>``.
Strings Arrow reads as ISO 8601 dates or seconds-resolution times become UTC datetimes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import math
import operator
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from .codec import decode
from .errors import DecodeError
from .ids import Position, parse_start
from .message import Envelope

if TYPE_CHECKING:
    from .backends.base import Cursor, RawEntry
    from .stream import Stream

__all__ = [
    "META",
    "Capture",
    "frame_of",
    "groups_frame",
    "load",
    "pending_frame",
    "save_frame",
]

logger = logging.getLogger("echo_lab")

#: The leading columns of every frame, before the data fields.
META = ("id", "ts", "topic", "type")
_OURS = frozenset(("data", "type", "headers"))
_OPT = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_TS = pa.timestamp("ns", tz="UTC")
_BACKOFF_MAX = 5.0


class _Chunk:
    """Up to one read batch of captured rows of one topic."""

    __slots__ = ("data", "ids", "n", "topic", "types")

    def __init__(
        self,
        topic: str,
        ids: bytes,
        data: bytes | list[bytes | str],
        types: list[str | None] | None,
        n: int,
    ) -> None:
        self.topic = topic
        self.ids = ids  # b"\n"-joined ids
        # the messages' JSON: as read (joined when parsed, off the runtime loop), or
        # b"\n"-joined compact JSON objects
        self.data = data
        self.types = types  # None when no entry has a type
        self.n = n


# -- turning raw entries into chunks ---------------------------------------------------------
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_data = operator.itemgetter("data")


def _json_line(data: Any) -> bytes:
    if isinstance(data, dict) or is_dataclass(data):
        return orjson.dumps(data, option=_OPT)
    return orjson.dumps({"value": data}, option=_OPT)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _chunk_of(topic: str, batch: Sequence[RawEntry]) -> tuple[_Chunk | None, int]:
    """Turn a batch of raw entries into a chunk; return it and the number of bad entries."""
    fields_list = list(map(_second, batch))
    datas: list[Any] | None = None
    types: list[str | None] | None = None
    bad = 0
    try:
        datas = list(map(_data, fields_list))
    except KeyError:  # entries written by another program or in Crystal Echo's format
        datas = None
    if datas is not None and max(map(len, fields_list)) > 1:
        if all(f.keys() <= _OURS for f in fields_list):  # typed messages, headers
            types = [_text(f.get("type")) for f in fields_list]
            if not any(types):
                types = None
        else:
            datas = None
    if datas is not None:
        ids = list(map(_first, batch))
    else:
        ids, datas, types_l = [], [], []
        for id_, fields in batch:
            raw = fields.get("data")
            if raw is not None and fields.keys() <= _OURS:
                ids.append(id_)
                datas.append(raw)
                types_l.append(_text(fields.get("type")))
                continue
            try:
                env = decode(topic, id_, fields)
            except DecodeError:
                bad += 1
                continue
            ids.append(id_)
            datas.append(_json_line(env.data))
            types_l.append(env.type)
        types = types_l if any(t is not None for t in types_l) else None
    if not ids:
        return None, bad
    # one buffer per batch, joined here: the background parser then needs (almost) no GIL
    try:
        data = b"\n".join(datas)
    except TypeError:  # some values are str (a backend that decodes responses)
        datas = [_as_bytes(d) for d in datas]
        data = b"\n".join(datas)
    if data.count(b"\n") != len(datas) - 1:  # a writer's JSON spans lines: make it compact
        data = b"\n".join([_compact(_as_bytes(d)) for d in datas])
    return _Chunk(topic, "\n".join(ids).encode(), data, types, len(ids)), bad


def _joined(chunks: Sequence[_Chunk]) -> bytes:
    """The chunks' JSON as one buffer, one object per line."""
    if len(chunks) == 1 and isinstance(chunks[0].data, bytes):
        return chunks[0].data
    pieces: list[Any] = []
    for c in chunks:
        if isinstance(c.data, bytes):
            pieces.append(c.data)
        else:
            pieces.extend(c.data)
    try:
        data = b"\n".join(pieces)
    except TypeError:  # some values are str (a backend that decodes responses)
        pieces = [_as_bytes(p) for p in pieces]
        data = b"\n".join(pieces)
    if data.count(b"\n") != sum(c.n for c in chunks) - 1:  # a writer's JSON spans lines
        pieces = []
        for c in chunks:
            if isinstance(c.data, bytes):
                pieces.append(c.data)
            else:
                pieces.extend(_compact(_as_bytes(d)) for d in c.data)
        data = b"\n".join(pieces)
    return data


def _compact(raw: bytes) -> bytes:
    if b"\n" not in raw and b"\r" not in raw:
        return raw
    try:
        return orjson.dumps(orjson.loads(raw), option=_OPT)
    except orjson.JSONDecodeError:
        return b"null"  # stays undecodable: an empty row when the frame is built


def _chunks_of_envelopes(envelopes: Iterable[Envelope]) -> list[_Chunk]:
    chunks: list[_Chunk] = []
    topic: str | None = None
    ids: list[str] = []
    datas: list[bytes] = []
    types: list[str | None] = []

    def flush() -> None:
        if ids:
            typed = types if any(t is not None for t in types) else None
            chunks.append(
                _Chunk(topic or "", "\n".join(ids).encode(), b"\n".join(datas), typed, len(ids))
            )

    for env in envelopes:
        if env.topic != topic:
            flush()
            topic, ids, datas, types = env.topic, [], [], []
        ids.append(env.id)
        datas.append(_json_line(env.data))
        types.append(env.type)
    flush()
    return chunks


# -- parsing chunks into tables ------------------------------------------------------------------
#: A parsed part: an Arrow table (the usual case) or a DataFrame (mixed-type fields).
Part = pa.Table | pd.DataFrame


def _flatten_record(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten_record(value, name + "."))
        else:
            out[name] = value
    return out


def _parse_fallback(data: bytes, n: int) -> pd.DataFrame:
    """Parse JSON lines one by one with orjson (an undecodable line gives an empty row)."""
    records: list[dict[str, Any]] = []
    for line in data.split(b"\n") if n else []:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            value = {}
        if not isinstance(value, dict):
            value = {} if value is None else {"value": value}
        elif any(isinstance(v, dict) for v in value.values()):
            value = _flatten_record(value)
        records.append(value)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(index=range(0))
    if not len(frame.columns):
        return pd.DataFrame(index=range(n))
    for col in frame.columns:  # strings as pandas' string dtype, like Arrow gives them
        column = frame[col]
        if column.dtype == object and pd.api.types.infer_dtype(column, skipna=True) == "string":
            frame[col] = column.astype("str")
    return frame


def _tidy_arrow(table: pa.Table) -> pa.Table:
    """Flatten nested columns (``a.b``) and make inferred timestamps UTC-aware."""
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    arrays = []
    for col in table.columns:
        t = col.type
        if pa.types.is_timestamp(t):
            col = col.cast(pa.timestamp("ns", tz=t.tz or "UTC"))
        elif pa.types.is_string(t):  # pandas' str dtype holds large strings: convert here,
            col = col.cast(pa.large_string())  # in the background, not in frame()
        arrays.append(col)
    return pa.Table.from_arrays(arrays, names=table.column_names)


def _parse_json(
    data: bytes, n: int, threads: bool = True, schema: list[pa.Schema | None] | None = None
) -> Part:
    """JSON lines -> an Arrow table of the data fields (or a DataFrame when Arrow cannot
    type them); always ``n`` rows. ``schema`` is a one-item box: the schema found by the
    first parse, reused to parse the next ones faster (new fields are still inferred)."""
    if n == 0:
        return pa.table({})
    options = pa_json.ReadOptions(use_threads=threads, block_size=1 << (20 if threads else 24))
    known = schema[0] if schema else None
    table = None
    if known is not None:
        try:
            table = pa_json.read_json(
                pa.py_buffer(data),
                read_options=options,
                parse_options=pa_json.ParseOptions(explicit_schema=known),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            table = None
    if table is None:
        try:
            table = pa_json.read_json(pa.py_buffer(data), read_options=options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return _parse_fallback(data, n)
        if schema is not None:
            schema[0] = table.schema
    if table.num_rows != n:
        return _parse_fallback(data, n)
    return _tidy_arrow(table)


_IDS_READ = pa_csv.ReadOptions(column_names=["id"], use_threads=False)
_IDS_PARSE = pa_csv.ParseOptions(delimiter="\t", quote_char=False)
_IDS_CONVERT = pa_csv.ConvertOptions(column_types={"id": pa.large_string()})
_MS_READ = pa_csv.ReadOptions(column_names=["ms", "seq"], use_threads=False)
_MS_PARSE = pa_csv.ParseOptions(delimiter="-", quote_char=False)
_MS_CONVERT = pa_csv.ConvertOptions(
    column_types={"ms": pa.int64(), "seq": pa.uint64()}, include_columns=["ms"]
)


def _ts_of_ids(ids: pa.Array) -> pa.Array:
    ms = pc.cast(pc.list_element(pc.split_pattern(ids, "-", max_splits=1), 0), pa.int64())
    return pc.cast(pc.cast(ms, pa.timestamp("ms", tz="UTC")), _TS)


def _meta(chunks: Sequence[_Chunk]) -> pa.Table:
    n = sum(c.n for c in chunks)
    raw = pa.py_buffer(chunks[0].ids if len(chunks) == 1 else b"\n".join([c.ids for c in chunks]))
    ids = pa_csv.read_csv(
        raw, read_options=_IDS_READ, parse_options=_IDS_PARSE, convert_options=_IDS_CONVERT
    ).column(0)
    try:
        ms = pa_csv.read_csv(
            raw, read_options=_MS_READ, parse_options=_MS_PARSE, convert_options=_MS_CONVERT
        ).column(0)
        ts = pc.cast(pc.cast(ms, pa.timestamp("ms", tz="UTC")), _TS)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # an id that is not "<ms>-<seq>"
        ts = _ts_of_ids(ids.combine_chunks())
    topics = pa.concat_arrays(
        [pa.repeat(pa.scalar(c.topic, pa.large_string()), c.n) for c in chunks]
    )
    if any(c.types is not None for c in chunks):
        types = pa.array(
            [t for c in chunks for t in (c.types if c.types is not None else [None] * c.n)],
            pa.large_string(),
        )
    else:
        types = pa.nulls(n, pa.large_string())
    return pa.table({"id": ids, "ts": ts, "topic": topics, "type": types})


def _data_names(names: Sequence[str]) -> list[str]:
    return [f"data.{c}" if c in META else c for c in names]


def _parse_chunks(
    chunks: Sequence[_Chunk], threads: bool = True, schema: list[pa.Schema | None] | None = None
) -> Part:
    """Parse captured chunks into one part: meta columns, then the data fields."""
    n = sum(c.n for c in chunks)
    fields = _parse_json(_joined(chunks), n, threads, schema)
    meta = _meta(chunks)
    if isinstance(fields, pa.Table):
        arrays = meta.columns + fields.columns
        return pa.Table.from_arrays(arrays, names=list(META) + _data_names(fields.column_names))
    fields.columns = _data_names([str(c) for c in fields.columns])
    return pd.concat([_to_pandas(meta), fields], axis=1)


def _to_pandas(part: Part) -> pd.DataFrame:
    if isinstance(part, pd.DataFrame):
        return part
    fix = [
        name
        for name, t in zip(part.column_names, part.schema.types, strict=True)
        if pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or ((pa.types.is_boolean(t) or pa.types.is_null(t)) and part.column(name).null_count)
    ]
    frame = part.to_pandas(split_blocks=True)
    for name in fix:  # Python lists and NaN for missing values, as from_records gives them
        values = [math.nan if v is None else v for v in part.column(name).to_pylist()]
        frame[name] = pd.Series(values, dtype=object, index=frame.index)
    return frame


def _nan_for_none(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing values of object columns as NaN (what a frame has), not None."""
    for col in frame.columns:
        column = frame[col]
        if column.dtype == object and column.isna().any():
            values = [math.nan if v is None else v for v in column.tolist()]
            frame[col] = pd.Series(values, dtype=object, index=frame.index)
    return frame


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series([], dtype="str"),
            "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
            "topic": pd.Series([], dtype="str"),
            "type": pd.Series([], dtype="str"),
        }
    )


def _combine(parts: Sequence[Part]) -> pd.DataFrame:
    """One frame of parts in order (a column missing in a part is NaN there)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_frame()
    if all(isinstance(p, pa.Table) for p in parts):
        try:
            table = (
                parts[0]
                if len(parts) == 1
                else pa.concat_tables(parts, promote_options="permissive")
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
        else:
            return _to_pandas(table)
    frame = pd.concat([_to_pandas(p) for p in parts], ignore_index=True)
    for col in frame.columns:
        if frame[col].dtype == object and pd.api.types.infer_dtype(frame[col]) == "string":
            frame[col] = frame[col].astype("str")
    return frame


def frame_of(envelopes: Iterable[Envelope]) -> pd.DataFrame:
    """Turn envelopes into a tidy frame: ``id``, ``ts``, ``topic``, ``type``, then data fields.

    Args:
        envelopes: the messages (e.g. ``stream.history(topic)``).

    Returns:
        One row per envelope; nested fields flattened with dots, missing fields NaN.
    """
    chunks = _chunks_of_envelopes(envelopes)
    return _combine([_parse_chunks(chunks)]) if chunks else _empty_frame()


# -- the capture ----------------------------------------------------------------------------------
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
        self.chunks: list[_Chunk] = []
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
                part = _parse_chunks(self.chunks, threads, self.schema)
                self.parsed = ((self.first, self.n), part)
                self.chunks = []
            return self.parsed[1]

    def part(self, threads: bool = True) -> Part:
        """The rows of a full segment, parsed (if still queued, parsed here, now)."""
        future = self.future
        if future is None or future.cancel():  # not started: do not wait for the background
            return self._parse_full(threads)
        return future.result()

    def open_part(self, first: int, n: int, chunks: list[_Chunk], threads: bool = True) -> Part:
        """The rows of the open segment as they were (``first``, ``n``, ``chunks``)."""
        with self.lock:
            cached = self.parsed
            if cached is not None and cached[0] == (first, n):
                return cached[1]
            part = _parse_chunks(chunks, threads, self.schema)
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
        chunk, bad = _chunk_of(topic, batch)
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

        def parse(item: tuple[_Segment, int, int, list[_Chunk] | None]) -> Part:
            seg, first, n, chunks = item
            part = (
                seg.part(threads) if chunks is None else seg.open_part(first, n, chunks, threads)
            )
            return _slice(part, max(start - first, 0))

        parts = [parse(picked[0])] if threads else list(_FRAME_POOL.map(parse, picked))
        frame = _combine(parts)
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


# -- groups and pending --------------------------------------------------------------------------
_GROUP_COLUMNS = {
    "name": "str",
    "consumers": "int64",
    "pending": "int64",
    "last_delivered_id": "str",
    "lag": "float64",
}
_PENDING_COLUMNS = {"id": "str", "consumer": "str", "idle": "float64", "deliveries": "int64"}


def _typed_frame(rows: list[dict[str, Any]], columns: Mapping[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=list(columns)) if rows else None
    if frame is None:
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in columns.items()})
    for col, dtype in columns.items():
        if col in frame and frame[col].dtype != dtype:
            if dtype == "int64" and frame[col].isna().any():
                dtype = "float64"
            frame[col] = frame[col].astype(dtype)
    return frame


def groups_frame(stream: Stream, topic: str) -> pd.DataFrame:
    """The consumer groups of ``topic`` as a DataFrame, one row per group.

    Columns: ``name``, ``consumers`` (members), ``pending`` (unacknowledged entries),
    ``last_delivered_id``, ``lag`` (entries not yet delivered to the group; NaN if unknown).
    """
    rows = []
    for g in stream.groups(topic):
        row = dict(g)
        if isinstance(row.get("consumers"), list | tuple | set):
            row["consumers"] = len(row["consumers"])
        if row.get("lag") is None:
            row["lag"] = float("nan")
        rows.append(row)
    return _typed_frame(rows, _GROUP_COLUMNS)


def pending_frame(stream: Stream, topic: str, group: str) -> pd.DataFrame:
    """The unacknowledged entries of ``group`` on ``topic``, one row per entry.

    Columns: ``id``, ``ts`` (when it was published), ``consumer`` (who holds it), ``idle``
    (seconds since its last delivery) and ``deliveries``.
    """
    frame = _typed_frame(stream.pending(topic, group), _PENDING_COLUMNS)
    ids = pa.array(frame["id"].tolist(), pa.string())
    frame.insert(1, "ts", pd.Series(_ts_of_ids(ids).to_pandas(), index=frame.index))
    if frame["ts"].dtype != "datetime64[ns, UTC]":
        frame["ts"] = frame["ts"].astype("datetime64[ns, UTC]")
    return frame


# -- save and load ---------------------------------------------------------------------------
_PARQUET = (".parquet", ".pq")
_CSV = (".csv",)
_JSONL = (".jsonl", ".ndjson")


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _PARQUET:
        return "parquet"
    if suffix in _CSV:
        return "csv"
    if suffix in _JSONL:
        return "jsonl"
    raise ValueError(
        f"cannot tell the format of {str(path)!r} from its suffix {suffix!r}: use .parquet/.pq, "
        ".csv or .jsonl/.ndjson"
    )


def save_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame to Parquet, CSV or JSON Lines, chosen by the suffix of ``path``.

    Timestamps keep microseconds and UTC in all three formats, and :func:`load` gives back an
    equal frame. Limits of CSV: list fields come back as text, and datetimes other than
    ``ts`` as strings. Returns the path.
    """
    path = Path(path)
    fmt = _format(path)
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "csv":
        out = frame.copy(deep=False)
        for col in out.columns:
            if isinstance(out[col].dtype, pd.DatetimeTZDtype):
                out[col] = out[col].dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out.to_csv(path, index=False)
    else:
        records = frame.to_dict(orient="records")
        with path.open("wb") as fh:
            for record in records:
                fh.write(orjson.dumps(_jsonable(record), option=_OPT))
                fh.write(b"\n")
    return path


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    for key, value in record.items():
        if isinstance(value, float) and value != value:
            record[key] = None
        elif isinstance(value, pd.Timestamp):
            record[key] = value.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif value is pd.NaT or value is pd.NA:
            record[key] = None
    return record


def _restore_meta(frame: pd.DataFrame) -> pd.DataFrame:
    for col in ("id", "topic", "type"):
        if col in frame and frame[col].dtype != "str":
            frame[col] = frame[col].astype("str")
    if "ts" in frame:
        ts = frame["ts"]
        if not isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = pd.to_datetime(ts, utc=True, format="ISO8601")
        frame["ts"] = ts.astype("datetime64[ns, UTC]")
    return frame


def load(path: str | Path) -> pd.DataFrame:
    """Read a frame saved by :meth:`Capture.save` (or any Parquet/CSV/JSON Lines table).

    The format is chosen by the suffix. Columns ``id``, ``topic`` and ``type`` come back as
    strings and ``ts`` as ``datetime64[ns, UTC]``; a JSON Lines file is typed exactly as a
    capture types messages.
    """
    path = Path(path)
    fmt = _format(path)
    if fmt == "parquet":
        frame = pd.read_parquet(path)
    elif fmt == "csv":
        frame = pd.read_csv(
            path,
            dtype={c: "str" for c in ("id", "topic", "type")},
        )
    else:
        data = path.read_bytes().rstrip(b"\n")
        n = data.count(b"\n") + 1 if data else 0
        frame = _to_pandas(_parse_json(data, n))
    return _nan_for_none(_restore_meta(frame))
