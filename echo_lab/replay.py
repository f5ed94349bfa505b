"""Re-publish recorded messages into any backend, keeping their timing.

``el.replay(source, stream, topic=None, speed=1.0)`` takes a :class:`~echo_lab.Capture`, a
DataFrame (as :meth:`Capture.frame` makes, or any table with a ``ts`` column) or a file that
:func:`echo_lab.load` reads, and publishes its rows in order on the runtime loop. Row ``i`` is
published ``(ts[i] - ts[0]) / speed`` seconds after the start; the schedule is absolute (no
drift accumulates), and rows that are due together go out as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .message import message_type
from .timed import TimedPublisher

if TYPE_CHECKING:  # pandas is imported when a replay starts: `import echo_lab` stays light
    import pandas as pd

    from .capture import Capture
    from .stream import Stream

__all__ = ["Replay", "replay"]

_META = ("id", "ts", "topic", "type")
_BATCH = 1000


def _frame_of(source: Any) -> pd.DataFrame:
    import pandas as pd

    from .capture import Capture
    from .files import load

    if isinstance(source, Capture):
        return source.frame()
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, str | Path):
        return load(source)
    raise TypeError(
        f"replay source must be a Capture, a DataFrame or a file path, got {type(source).__name__}"
    )


def _cleaner() -> Callable[[Any], tuple[bool, Any]]:
    import numpy as np
    import pandas as pd

    def clean(value: Any) -> tuple[bool, Any]:
        """(keep, JSON-ready value) of one cell: missing values are dropped."""
        if isinstance(value, list | tuple | dict):
            return True, value
        if isinstance(value, np.ndarray):
            return True, value.tolist()
        if pd.isna(value):
            return False, None
        if isinstance(value, datetime):
            return True, value.isoformat()
        if isinstance(value, np.generic):
            return True, value.item()
        return True, value

    return clean


def _unflatten(record: dict[str, Any], clean: Callable[[Any], tuple[bool, Any]]) -> dict[str, Any]:
    """``{"a.b": 1, "data.type": "x"}`` -> ``{"a": {"b": 1}, "type": "x"}``."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        keep, value = clean(value)
        if not keep:
            continue
        if key.startswith("data.") and key[5:] in _META:
            key = key[5:]
        if "." not in key:
            out[key] = value
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out


def _payloads(frame: pd.DataFrame) -> list[Any]:
    """One payload per row: a registered ``Message`` instance when the row's type is known,
    else a dict of its data fields."""
    data_cols = [c for c in frame.columns if c not in _META]
    records = frame[data_cols].to_dict(orient="records") if data_cols else [{}] * len(frame)
    types = frame["type"].tolist() if "type" in frame else [None] * len(frame)
    out: list[Any] = []
    clean = _cleaner()
    for record, type_name in zip(records, types, strict=True):
        data = _unflatten(record, clean)
        cls = message_type(type_name) if isinstance(type_name, str) else None
        if cls is not None:
            try:
                out.append(cls(**data))
                continue
            except TypeError:
                pass
        out.append(data)
    return out


def _offsets(frame: pd.DataFrame, speed: float | None) -> list[float]:
    if speed is None:
        return [0.0] * len(frame)
    if not (isinstance(speed, int | float) and speed > 0):
        raise ValueError(f"speed must be a positive number or None, got {speed!r}")
    if "ts" not in frame:
        raise ValueError(
            "cannot keep the timing: the source has no 'ts' column (pass speed=None to "
            "publish as fast as possible)"
        )
    import pandas as pd

    ts = pd.to_datetime(frame["ts"], utc=True)
    if ts.isna().any():
        raise ValueError("cannot keep the timing: the 'ts' column has missing values")
    seconds = ((ts - ts.iloc[0]).dt.total_seconds() / speed).tolist() if len(ts) else []
    due, out = 0.0, []
    for s in seconds:  # never earlier than the row before
        due = max(due, s)
        out.append(due)
    return out


class Replay(TimedPublisher):
    """A replay running on the runtime loop (returned by :func:`replay`): ``sent`` of
    ``total``, ``rate``, ``wait()``, ``stop()``."""

    def __init__(
        self,
        stream: Stream,
        topics: Sequence[str],
        payloads: Sequence[Any],
        offsets: Sequence[float],
    ) -> None:
        super().__init__(stream, zip(offsets, topics, payloads, strict=True), len(payloads))

    def __repr__(self) -> str:
        state = "running" if self.running else "done"
        return f"<Replay {state} sent={self.sent}/{self.total}>"


def replay(
    source: Capture | pd.DataFrame | str | Path,
    stream: Stream,
    topic: str | None = None,
    speed: float | None = 1.0,
    *,
    block: bool = False,
    progress: bool | None = None,
) -> Replay:
    """Re-publish a capture, a DataFrame or a file into ``stream``, keeping the timing.

    Args:
        source: a :class:`~echo_lab.Capture`, a DataFrame (``ts`` column for the timing,
            ``topic``/``type`` columns optional, other columns are the data; ``a.b`` columns
            become nested fields) or a Parquet/CSV/JSON Lines file.
        stream: where to publish (any backend).
        topic: publish everything to this topic (default: each row's ``topic``).
        speed: time scale: 1.0 keeps the original inter-arrival times, 10 is ten times
            faster; ``None`` publishes as fast as possible.
        block: wait until done (with a progress bar in a terminal); else run in the
            background and return at once.
        progress: show a progress bar while blocking (default: when stderr is a terminal).

    Returns:
        A :class:`Replay` handle (``wait()``, ``stop()``, ``sent``, ``total``).

    Raises:
        ValueError: no topic known, a bad ``speed``, or no ``ts`` column to time by.
    """
    frame = _frame_of(source)
    if topic is not None:
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}")
        topics: list[str] = [topic] * len(frame)
    elif "topic" in frame:
        topics = [str(t) for t in frame["topic"].tolist()]
    else:
        raise ValueError("the source has no 'topic' column: pass topic='...' to replay()")
    offsets = _offsets(frame, speed)
    handle = Replay(stream, topics, _payloads(frame), offsets)
    if block:
        handle.wait(progress=progress)
    return handle
