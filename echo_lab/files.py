"""Save frames to Parquet, CSV or JSON Lines and load them back, chosen by the file's suffix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from .frames import nan_for_none, parse_json_lines

__all__ = ["load", "save_frame"]

_OPT = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
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
        frame = parse_json_lines(path.read_bytes())
    return nan_for_none(_restore_meta(frame))
