"""Re-publish recorded messages into any backend, keeping their timing.

``el.replay(source, stream, topic=None, speed=1.0)`` takes a :class:`~echo_lab.Capture`, a
DataFrame (as :meth:`Capture.frame` makes, or any table with a ``ts`` column) or a file that
:func:`echo_lab.load` reads, and publishes its rows in order on the runtime loop. Row ``i`` is
published ``(ts[i] - ts[0]) / speed`` seconds after the start; the schedule is absolute (no
drift accumulates), and rows that are due together go out as one batch.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from .message import message_type

if TYPE_CHECKING:  # pandas is imported when a replay starts: `import echo_lab` stays light
    import pandas as pd

    from .capture import Capture
    from .stream import Stream

__all__ = ["Replay", "replay"]

_META = ("id", "ts", "topic", "type")
_BATCH = 1000


def _frame_of(source: Any) -> pd.DataFrame:
    import pandas as pd

    from .capture import Capture, load

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


class Replay:
    """A replay running on the runtime loop (returned by :func:`replay`).

    Attributes:
        total: rows to publish.
        sent: rows published so far.
        error: the exception that ended it early, if any.
    """

    def __init__(
        self,
        stream: Stream,
        topics: Sequence[str],
        payloads: Sequence[Any],
        offsets: Sequence[float],
    ) -> None:
        self.stream = stream
        self.total = len(payloads)
        self.sent = 0
        self.error: BaseException | None = None
        self._topics = topics
        self._payloads = payloads
        self._offsets = offsets
        self._done = threading.Event()
        self._stopping = False
        self._started = time.monotonic()
        self._ended: float | None = None
        self._future = stream.runtime.spawn(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        topics, payloads, offsets = self._topics, self._payloads, self._offsets
        n = self.total
        try:
            t0 = loop.time()
            i = 0
            while i < n and not self._stopping:
                delay = t0 + offsets[i] - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = loop.time() - t0
                topic = topics[i]
                j = i + 1
                while j < n and j - i < _BATCH and topics[j] == topic and offsets[j] <= now:
                    j += 1
                await self.stream.apublish_many(topic, payloads[i:j])
                self.sent = j
                i = j
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self.error = exc
        finally:
            self._ended = time.monotonic()
            self._done.set()

    @property
    def running(self) -> bool:
        """True until every row is published (or it is stopped)."""
        return not self._done.is_set()

    @property
    def rate(self) -> float:
        """Rows published per second."""
        end = self._ended if self._ended is not None else time.monotonic()
        return self.sent / max(end - self._started, 1e-9)

    def wait(self, timeout: float | None = None, *, progress: bool | None = None) -> bool:
        """Block until the replay ends; return False if ``timeout`` s passed first.

        Args:
            timeout: seconds to wait at most (``None``: until done).
            progress: show a tqdm progress bar (default: when stderr is a terminal).

        Raises:
            Exception: whatever made the replay fail (e.g. an unreachable backend).
        """
        if self.stream.runtime.in_loop_thread():
            raise RuntimeError("cannot wait for a replay from a handler (it runs on the loop)")
        if progress is None:
            progress = sys.stderr.isatty()
        if not progress:
            finished = self._done.wait(timeout)
        else:
            from tqdm.auto import tqdm

            deadline = None if timeout is None else time.monotonic() + timeout
            with tqdm(total=self.total, unit="msg", desc="replay") as bar:
                while True:
                    left = None if deadline is None else deadline - time.monotonic()
                    finished = self._done.wait(0.1 if left is None else max(0, min(0.1, left)))
                    bar.update(self.sent - bar.n)
                    if finished or (left is not None and left <= 0):
                        break
        if self.error is not None:
            raise self.error
        return finished

    def stop(self) -> Self:
        """Stop publishing (what was sent stays sent). Returns ``self``."""
        self._stopping = True
        if not self._done.is_set():
            self._future.cancel()
            if not self.stream.runtime.in_loop_thread():
                self._done.wait(5)
        return self

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
