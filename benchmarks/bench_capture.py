"""Capture beside raw pandas, same run.

* capture + ``frame()`` of N = 1,000,000 messages already in a topic (memory backend, read
  from ``start="0"``) against ``DataFrame.from_records`` of the same dicts (raw, msg/s);
* the capture's peak memory (tracemalloc, while it records) against the finished frame's
  ``memory_usage(deep=True)`` (MB);
* a fan-out consumer's msg/s reading M messages with and without a capture of the same
  topic attached (both on the runtime loop).
"""

from __future__ import annotations

import gc
import random
import threading
import time
import tracemalloc
import uuid

import pandas as pd

import echo_lab as el

from .common import Row

N = 1_000_000
M = 200_000


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


def _time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _consume(stream: el.Stream, topic: str, m: int, with_capture: bool) -> float:
    done = threading.Event()
    seen = [0]

    def handler(env: el.Envelope) -> None:
        seen[0] += 1
        if seen[0] == m:
            done.set()

    cap = stream.capture(topic, start="0", max_rows=m) if with_capture else None
    t0 = time.perf_counter()
    sub = stream.on(topic, handler, start="0")
    done.wait()
    elapsed = time.perf_counter() - t0
    sub.stop()
    if cap is not None:
        cap.stop()
    return m / elapsed


def run() -> list[Row]:
    rows = _rows(N)
    stream, topic = _filled(rows)
    try:
        frames: list[pd.DataFrame] = []
        ours = _time(lambda: frames.append(_capture_frame(stream, topic, N)))
        raw = _time(lambda: pd.DataFrame.from_records(rows))
        frame = frames[-1]
        assert len(frame) == N and frame["co2"].iloc[-1] == rows[-1]["co2"]
        frames.clear()

        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        cap = stream.capture(topic, start="0", n=N, max_rows=N)
        cap.wait()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        frame = cap.frame()
        frame_bytes = frame.memory_usage(deep=True).sum()
        del cap, frame
    finally:
        stream.close()

    small = _rows(M)
    stream, topic = _filled(small)
    try:
        plain = max(_consume(stream, topic, M, False) for _ in range(3))
        captured = max(_consume(stream, topic, M, True) for _ in range(3))
    finally:
        stream.close()

    return [
        Row(
            "capture",
            f"capture+frame() of {N:,} msgs vs from_records",
            N / ours,
            N / raw,
            bar=1 / 1.5,
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
            captured,
            plain,
            bar=0.8,
        ),
    ]
