"""Raw entries and envelopes into pandas DataFrames, and the stream's state as DataFrames.

Captured rows are kept as compact chunks: per read batch, one buffer of ids and one buffer of
the messages' JSON, one per line; no envelope, dict or DataFrame is made per message.
:func:`parse_chunks` turns chunks into an Arrow table with Arrow's JSON reader (nested objects
become ``a.b`` columns, missing fields nulls, numbers stay numeric); what Arrow cannot type (a
field that is a number in one message and a string in another) falls back to orjson plus
``DataFrame.from_records`` (an object column). :func:`combine` converts parts to one frame.

Frames have the columns ``id``, ``ts`` (``datetime64[ns, UTC]``), ``topic``, ``type``, then one
column per data field. A data field called like one of those four becomes ``data.<name>``.
Strings Arrow reads as ISO 8601 dates or seconds-resolution times become UTC datetimes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import is_dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from .codec import decode
from .errors import DecodeError
from .message import Envelope

if TYPE_CHECKING:
    from .backends.base import RawEntry
    from .stream import Stream

__all__ = [
    "META",
    "Chunk",
    "Part",
    "chunk_of",
    "combine",
    "frame_of",
    "groups_frame",
    "nan_for_none",
    "parse_chunks",
    "parse_json_lines",
    "pending_frame",
]

#: The leading columns of every frame, before the data fields.
META = ("id", "ts", "topic", "type")
_OURS = frozenset(("data", "type", "headers"))
_OPT = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_TS = pa.timestamp("ns", tz="UTC")


class Chunk:
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


def chunk_of(topic: str, batch: Sequence[RawEntry]) -> tuple[Chunk | None, int]:
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
    return Chunk(topic, "\n".join(ids).encode(), data, types, len(ids)), bad


def _joined(chunks: Sequence[Chunk]) -> bytes:
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


def _chunks_of_envelopes(envelopes: Iterable[Envelope]) -> list[Chunk]:
    chunks: list[Chunk] = []
    topic: str | None = None
    ids: list[str] = []
    datas: list[bytes] = []
    types: list[str | None] = []

    def flush() -> None:
        if ids:
            typed = types if any(t is not None for t in types) else None
            chunks.append(
                Chunk(topic or "", "\n".join(ids).encode(), b"\n".join(datas), typed, len(ids))
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


def _meta(chunks: Sequence[Chunk]) -> pa.Table:
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


def parse_chunks(
    chunks: Sequence[Chunk], threads: bool = True, schema: list[pa.Schema | None] | None = None
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


def nan_for_none(frame: pd.DataFrame) -> pd.DataFrame:
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


def combine(parts: Sequence[Part]) -> pd.DataFrame:
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
    return combine([parse_chunks(chunks)]) if chunks else _empty_frame()


def parse_json_lines(data: bytes) -> pd.DataFrame:
    """A frame of JSON Lines (one object per line), typed exactly as a capture types messages."""
    data = data.rstrip(b"\n")
    n = data.count(b"\n") + 1 if data else 0
    return _to_pandas(_parse_json(data, n))


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
