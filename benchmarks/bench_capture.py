"""Capture beside raw pandas, same run.

* capture + ``frame()`` of N = 1,000,000 messages already in a topic (memory backend, read
  from ``start="0"``) against ``DataFrame.from_records`` of the same dicts (raw, msg/s);
* the capture's peak memory: what it holds once it has recorded N messages
  (``Capture.memory_usage()``, counting the message bytes it shares with the memory
  backend's log as its own) plus the transient peak of Python allocations while it recorded
  (tracemalloc), against the finished frame's ``memory_usage(deep=True)`` (MB);
* a fan-out consumer's msg/s reading M messages with and without a capture of the same
  topic attached (both on the runtime loop).
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
import uuid
from collections.abc import Callable

import pandas as pd

import echo_lab as el

from .common import Counter, Row

N = 1_000_000
M = 200_000
ROUNDS = 5


def _rows(n: int) -> list[dict]:
    rnd = random.Random(7)
    rooms = ["kitchen", "living", "bedroom", "bath", "office"]
    return [
        {
            "sensor": f"s{i % 5}",
            "room": rooms[i % 5],
            "temp": round(19 + rnd.random() * 5, 2),
            "humidity": round(35 + rnd.random() * 20, 1),
            "co2": 400 + (i * 7919) % 900,
        }
        for i in range(n)
    ]


def _filled(rows: list[dict]) -> tuple[el.Stream, str]:
    stream = el.connect(f"memory://bench-{uuid.uuid4().hex[:8]}", maxlen=len(rows) + 1)
    topic = "sensors"
    for i in range(0, len(rows), 50_000):
        stream.publish_many(topic, rows[i : i + 50_000])
    return stream, topic


def _capture_frame(stream: el.Stream, topic: str, n: int) -> pd.DataFrame:
    cap = stream.capture(topic, start="0", n=n, max_rows=n)
    cap.wait()
    return cap.frame()


def _timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _raw_same_frame(ids: list[str], rows: list[dict], topic: str) -> pd.DataFrame:
    """What building the very same frame takes in plain pandas: from_records of the dicts,
    plus the id, ts, topic and type columns."""
    df = pd.DataFrame.from_records(rows)
    ms = pd.Series([int(i.partition("-")[0]) for i in ids])
    meta = pd.DataFrame(
        {
            "id": pd.Series(ids, dtype="str"),
            "ts": pd.to_datetime(ms, unit="ms", utc=True).astype("datetime64[ns, UTC]"),
            "topic": pd.Series([topic] * len(ids), dtype="str"),
            "type": pd.Series([None] * len(ids), dtype="str"),
        }
    )
    return pd.concat([meta, df], axis=1)


def _consume(stream: el.Stream, topic: str, m: int, with_capture: bool) -> float:
    counter = Counter(m)
    cap = stream.capture(topic, start="0", max_rows=m) if with_capture else None
    t0 = time.perf_counter()
    sub = stream.on(topic, counter, start="0")
    counter.done.wait()
    elapsed = time.perf_counter() - t0
    sub.stop()
    if cap is not None:
        cap.stop()
    return m / elapsed


def run() -> list[Row]:
    rows = _rows(N)
    stream, topic = _filled(rows)
    try:
        ids = [env.id for env in stream.history(topic, count=N)]
        ours, raw, raw_same = [], [], []
        for _ in range(ROUNDS):  # interleaved: a busy machine slows both sides alike
            ours.append(_timed(lambda: _capture_frame(stream, topic, N)))
            raw.append(_timed(lambda: pd.DataFrame.from_records(rows)))
            raw_same.append(_timed(lambda: _raw_same_frame(ids, rows, topic)))
        frame = _capture_frame(stream, topic, N)
        expected = _raw_same_frame(ids, rows, topic)
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
        del frame, expected

        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        cap = stream.capture(topic, start="0", n=N, max_rows=N)
        cap.wait()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # what the capture holds (message bytes shared with the memory backend's log counted
        # as its own), plus the transient peak of Python allocations while it recorded
        peak = cap.memory_usage() + (peak - current)
        frame = cap.frame()
        frame_bytes = frame.memory_usage(deep=True).sum()
        del cap, frame
    finally:
        stream.close()

    small = _rows(M)
    stream, topic = _filled(small)
    try:
        plain, captured = [], []
        for _ in range(ROUNDS):
            plain.append(_consume(stream, topic, M, False))
            captured.append(_consume(stream, topic, M, True))
    finally:
        stream.close()

    return [
        Row(
            "capture",
            f"capture+frame() of {N:,} msgs vs from_records(dicts)",
            N / min(ours),
            N / min(raw),
            bar=0.67,
        ),
        Row(
            "capture",
            "capture+frame() vs from_records + id/ts/topic/type columns",
            N / min(ours),
            N / min(raw_same),
        ),
        Row(
            "capture",
            "capture peak memory vs frame memory_usage(deep)",
            peak / 1e6,
            frame_bytes / 1e6,
            unit="MB",
            bar=0.5,
        ),
        Row(
            "capture",
            f"consumer msg/s with capture vs without ({M:,} msgs)",
            max(captured),
            max(plain),
            bar=0.8,
        ),
    ]
