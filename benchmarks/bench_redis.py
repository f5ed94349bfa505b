"""Redis backend paths beside raw redis-py (hiredis) doing the same work, in the same run.

Starts its own ``redis-server`` on a free port (``--save "" --appendonly no``).
Run: ``python -m benchmarks redis``.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable

import orjson
import redis
import redis.asyncio

import echo_lab as el

from .common import Counter, Row

N_MANY = 50_000
N_SINGLE = 5_000
N_GROUP = 50_000
N_LATENCY = 1_000
N_THREADS = 4
ROW = {"sensor": "s-01", "room": "kitchen", "temp": 21.5, "humidity": 40.2, "seq": 0}
ROWS = [dict(ROW, seq=i) for i in range(max(N_MANY, N_GROUP))]
MAXLEN = 1_000_000


def _topic(name: str) -> str:
    return f"bench-{name}-{time.monotonic_ns()}"


# -- publish_many vs pipelined XADD ----------------------------------------------------------
def _raw_pipelined(r: redis.Redis, n: int) -> int:
    key = _topic("raw-many")
    for i in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for row in ROWS[i : i + 1000]:
            pipe.xadd(key, {"data": orjson.dumps(row)}, maxlen=MAXLEN, approximate=True)
        pipe.execute()
    r.delete(key)
    return n


def _ours_many(stream: el.Stream, n: int) -> int:
    topic = _topic("many")
    for i in range(0, n, 1000):
        stream.publish_many(topic, ROWS[i : i + 1000])
    stream.delete(topic)
    return n


# -- single sync publishes vs XADD one at a time ---------------------------------------------
def _raw_single(r: redis.Redis, n: int) -> int:
    key = _topic("raw-single")
    for row in ROWS[:n]:
        r.xadd(key, {"data": orjson.dumps(row)}, maxlen=MAXLEN, approximate=True)
    r.delete(key)
    return n


def _ours_single(stream: el.Stream, n: int) -> int:
    topic = _topic("single")
    publish = stream.publish
    for row in ROWS[:n]:
        publish(topic, row)
    stream.delete(topic)
    return n


# -- concurrent single publishes (coalesced into pipelines) -----------------------------------
def _threads(fn: Callable[[int], None], n: int) -> int:
    per = n // N_THREADS
    threads = [threading.Thread(target=fn, args=(per,)) for _ in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * N_THREADS


def _raw_threads(r: redis.Redis, n: int) -> int:
    key = _topic("raw-threads")

    def work(k: int) -> None:
        for row in ROWS[:k]:
            r.xadd(key, {"data": orjson.dumps(row)}, maxlen=MAXLEN, approximate=True)

    done = _threads(work, n)
    r.delete(key)
    return done


def _ours_threads(stream: el.Stream, n: int) -> int:
    topic = _topic("threads")

    def work(k: int) -> None:
        for row in ROWS[:k]:
            stream.publish(topic, row)

    done = _threads(work, n)
    stream.delete(topic)
    return done


async def _raw_tasks(url: str, n: int, tasks: int = 50) -> int:
    r = redis.asyncio.Redis.from_url(url)
    key = _topic("raw-tasks")
    per = n // tasks

    async def work() -> None:
        for row in ROWS[:per]:
            await r.xadd(key, {"data": orjson.dumps(row)}, maxlen=MAXLEN, approximate=True)

    await asyncio.gather(*(work() for _ in range(tasks)))
    await r.delete(key)
    await r.aclose()
    return per * tasks


async def _ours_tasks(stream: el.Stream, n: int, tasks: int = 50) -> int:
    topic = _topic("tasks")
    per = n // tasks

    async def work() -> None:
        for row in ROWS[:per]:
            await stream.apublish(topic, row)

    await asyncio.gather(*(work() for _ in range(tasks)))
    await stream.adelete(topic)
    return per * tasks


# -- group consumer with ack vs XREADGROUP + XACK + orjson.loads ------------------------------
def _fill(r: redis.Redis, key: str, n: int) -> None:
    for i in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for row in ROWS[i : i + 1000]:
            pipe.xadd(key, {"data": orjson.dumps(row)})
        pipe.execute()


def _raw_group(r: redis.Redis, n: int) -> tuple[int, float]:
    key = _topic("raw-group")
    _fill(r, key, n)
    t0 = time.perf_counter()
    r.xgroup_create(key, "g", "0")
    got = 0
    loads = orjson.loads
    while got < n:
        reply = r.xreadgroup("g", "c", {key: ">"}, count=1000)
        entries = reply[0][1]
        ids = []
        for id_, fields in entries:
            loads(fields[b"data"])
            ids.append(id_)
        r.xack(key, "g", *ids)
        got += len(entries)
    elapsed = time.perf_counter() - t0
    r.delete(key)
    return got, elapsed


def _ours_group(
    stream: el.Stream, r: redis.Redis, n: int, sync_handler: bool
) -> tuple[int, float]:
    topic = _topic("group")
    _fill(r, f"{stream.backend.prefix}{topic}", n)  # type: ignore[attr-defined]
    counter = Counter(n)
    t0 = time.perf_counter()
    sub = stream.on(topic, counter if sync_handler else counter.acall, group="g", start="0")
    counter.done.wait(120)
    elapsed = time.perf_counter() - t0
    sub.stop()
    stream.delete(topic)
    return counter.count, elapsed


# -- one-way latency ----------------------------------------------------------------------------
def _raw_latency(url: str, n: int) -> list[float]:
    key = _topic("raw-latency")
    writer = redis.Redis.from_url(url)
    reader = redis.Redis.from_url(url)
    writer.xadd(key, {"data": b"{}"})
    samples: list[float] = []
    got = threading.Event()
    ready = threading.Event()

    def read() -> None:
        last = "$"
        ready.set()
        while len(samples) < n:
            reply = reader.xread({key: last}, block=1000, count=100)
            now = time.perf_counter()
            for id_, fields in reply[0][1] if reply else []:
                samples.append(now - orjson.loads(fields[b"data"])["t"])
                last = id_
                got.set()

    thread = threading.Thread(target=read)
    thread.start()
    ready.wait()
    time.sleep(0.1)
    for _ in range(n):
        got.clear()
        writer.xadd(key, {"data": orjson.dumps({"t": time.perf_counter()})})
        got.wait(5)
    thread.join()
    writer.delete(key)
    writer.close()
    reader.close()
    return samples


def _ours_latency(stream: el.Stream, n: int, sync_handler: bool) -> list[float]:
    topic = _topic("latency")
    samples: list[float] = []
    got = threading.Event()

    def handler(env: el.Envelope) -> None:
        samples.append(time.perf_counter() - env.data["t"])
        got.set()

    async def ahandler(env: el.Envelope) -> None:
        handler(env)

    sub = stream.on(topic, handler if sync_handler else ahandler)
    time.sleep(0.1)
    for _ in range(n):
        got.clear()
        stream.publish(topic, {"t": time.perf_counter()})
        got.wait(5)
    sub.stop()
    stream.delete(topic)
    return samples


def _pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] * 1e6


def _rate(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def _paired(raw: Callable[[], float], ours: Callable[[], float], rounds: int = 3) -> tuple:
    """Best of ``rounds`` for each side, alternating which goes first (the machine is noisy)."""
    best_raw = best_ours = 0.0
    for i in range(rounds):
        for side in (raw, ours) if i % 2 == 0 else (ours, raw):
            value = side()
            if side is raw:
                best_raw = max(best_raw, value)
            else:
                best_ours = max(best_ours, value)
    return best_ours, best_raw


def _latency_rounds(
    sides: dict[str, Callable[[], list[float]]], rounds: int = 3
) -> dict[str, list[float]]:
    """Alternate latency rounds per side; keep each side's round with the lowest p50."""
    best: dict[str, list[float]] = {}
    names = list(sides)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples = sides[name]()
            if name not in best or _pct(samples, 50) < _pct(best[name], 50):
                best[name] = samples
    return best


def run() -> list[Row]:
    """Measure the Redis paths and the raw redis-py paths on a fresh local server."""
    from tests.fixtures.redis import RedisServer

    server = RedisServer().start()
    try:
        url = server.url
        r = redis.Redis.from_url(url)
        stream = el.connect(url, maxlen=MAXLEN)
        rt = stream.runtime
        rows: list[Row] = []

        def row(path: str, pair: tuple, bar: float | None = None) -> None:
            rows.append(Row("redis", path, pair[0], pair[1], bar=bar))

        row(
            "publish_many (sync) vs pipelined XADD x1000",
            _paired(
                lambda: _rate(lambda: _raw_pipelined(r, N_MANY)),
                lambda: _rate(lambda: _ours_many(stream, N_MANY)),
            ),
            0.8,
        )
        row(
            "loop of sync publish vs XADD one at a time",
            _paired(
                lambda: _rate(lambda: _raw_single(r, N_SINGLE)),
                lambda: _rate(lambda: _ours_single(stream, N_SINGLE)),
            ),
            0.7,
        )
        row(
            f"sync publish from {N_THREADS} threads (coalesced) vs XADD from {N_THREADS} threads",
            _paired(
                lambda: _rate(lambda: _raw_threads(r, N_SINGLE * 2)),
                lambda: _rate(lambda: _ours_threads(stream, N_SINGLE * 2)),
            ),
        )
        row(
            "apublish from 50 tasks (coalesced) vs redis.asyncio XADD from 50 tasks",
            _paired(
                lambda: _rate(lambda: asyncio.run(_raw_tasks(url, N_SINGLE * 4))),
                lambda: _rate(lambda: rt.run(_ours_tasks(stream, N_SINGLE * 4))),
            ),
        )

        def group_rate(fn: Callable[[], tuple[int, float]]) -> float:
            n, t = fn()
            return n / t

        row(
            "group consumer + ack, async handler vs XREADGROUP+XACK x1000 + loads",
            _paired(
                lambda: group_rate(lambda: _raw_group(r, N_GROUP)),
                lambda: group_rate(lambda: _ours_group(stream, r, N_GROUP, sync_handler=False)),
            ),
            0.7,
        )
        row(
            "group consumer + ack, sync handler vs XREADGROUP+XACK x1000 + loads",
            _paired(
                lambda: group_rate(lambda: _raw_group(r, N_GROUP)),
                lambda: group_rate(lambda: _ours_group(stream, r, N_GROUP, sync_handler=True)),
            ),
            0.7,
        )
        lat = _latency_rounds(
            {
                "raw": lambda: _raw_latency(url, N_LATENCY),
                "async": lambda: _ours_latency(stream, N_LATENCY, sync_handler=False),
                "sync": lambda: _ours_latency(stream, N_LATENCY, sync_handler=True),
            }
        )
        for kind, bar in (("async", 1 / 1.5), ("sync", None)):
            for q in (50, 99):
                rows.append(
                    Row(
                        "redis",
                        f"latency p{q} publish->{kind} handler vs XADD->XREAD BLOCK",
                        _pct(lat[kind], q),
                        _pct(lat["raw"], q),
                        unit="µs",
                        bar=bar if q == 50 else None,
                    )
                )
        stream.close()
        r.close()
        return rows
    finally:
        server.close()
