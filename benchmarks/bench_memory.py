"""Memory backend paths against raw ``asyncio.Queue`` equivalents, measured in the same run.

Run: ``python -m benchmarks memory``.
"""

from __future__ import annotations

import asyncio
import time

import orjson

import echo_lab as el

from .common import Counter, Row, best_rates

N = 200_000
N_SYNC = 50_000
ROW = {"sensor": "s-01", "room": "kitchen", "temp": 21.5, "humidity": 40.2, "seq": 0}
ROWS = [dict(ROW, seq=i) for i in range(N)]


async def _raw_queue_1_to_1(n: int) -> int:
    q: asyncio.Queue[dict] = asyncio.Queue(maxsize=1000)

    async def consume() -> None:
        for _ in range(n):
            await q.get()

    task = asyncio.create_task(consume())
    for row in ROWS[:n]:
        await q.put(row)
    await task
    return n


async def _raw_queue_fan_out(n: int, subscribers: int = 4) -> int:
    queues = [asyncio.Queue(maxsize=1000) for _ in range(subscribers)]

    async def consume(q: asyncio.Queue[dict]) -> None:
        for _ in range(n):
            await q.get()

    tasks = [asyncio.create_task(consume(q)) for q in queues]
    for row in ROWS[:n]:
        for q in queues:
            await q.put(row)
    await asyncio.gather(*tasks)
    return n


async def _raw_queue_json(n: int, subscribers: int = 1) -> int:
    """Context: queues carrying JSON, so each consumer gets its own copy (as ours do). The
    bytes are right-sized as ours are: orjson's 4 KiB buffers, 1000 of them in flight, would
    make this baseline slower than it need be."""
    queues = [asyncio.Queue(maxsize=1000) for _ in range(subscribers)]

    async def consume(q: asyncio.Queue[bytes]) -> None:
        for _ in range(n):
            orjson.loads(await q.get())

    tasks = [asyncio.create_task(consume(q)) for q in queues]
    for row in ROWS[:n]:
        raw = b"".join((orjson.dumps(row), b""))
        for q in queues:
            await q.put(raw)
    await asyncio.gather(*tasks)
    return n


async def _ours_batch(stream: el.Stream, n: int, subscribers: int = 1) -> int:
    topic = f"bench-{time.monotonic_ns()}"
    ready = asyncio.Event()
    started = 0

    async def consume() -> None:
        nonlocal started
        got = 0
        agen = stream.subscribe(topic)
        it = agen.__aiter__()
        first = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)  # the cursor is open once the generator has started
        started += 1
        if started == subscribers:
            ready.set()
        await first
        got = 1
        async for _ in it:
            got += 1
            if got == n:
                break
        await agen.aclose()

    tasks = [asyncio.create_task(consume()) for _ in range(subscribers)]
    await ready.wait()
    await asyncio.sleep(0.01)
    for i in range(0, n, 1000):
        await stream.apublish_many(topic, ROWS[i : i + 1000])
    await asyncio.gather(*tasks)
    await stream.adelete(topic)
    return n


def _ours_sync_publish(stream: el.Stream, n: int) -> int:
    topic = f"bench-sync-{time.monotonic_ns()}"
    counter = Counter(n)
    sub = stream.on(topic, counter.acall)
    publish = stream.publish
    for row in ROWS[:n]:
        publish(topic, row)
    counter.done.wait(60)
    sub.stop()
    stream.delete(topic)
    return n


def run() -> list[Row]:
    """Measure the memory paths and their raw equivalents."""
    stream = el.connect("memory://bench")
    rt = stream.runtime
    raw_1, ours_1, raw_4, ours_4, ours_sync, json_1, json_4 = best_rates(
        lambda: rt.run(_raw_queue_1_to_1(N)),
        lambda: rt.run(_ours_batch(stream, N)),
        lambda: rt.run(_raw_queue_fan_out(N // 4)),
        lambda: rt.run(_ours_batch(stream, N // 4, 4)),
        lambda: _ours_sync_publish(stream, N_SYNC),
        lambda: rt.run(_raw_queue_json(N)),
        lambda: rt.run(_raw_queue_json(N // 4, 4)),
    )
    stream.close()
    return [
        Row("memory", "publish_many -> 1 async subscriber vs Queue 1->1", ours_1, raw_1, bar=0.5),
        Row("memory", "publish_many -> 4 subscribers vs 4 Queues", ours_4, raw_4, bar=0.5),
        Row(
            "memory",
            "sync publish (main thread) -> 1 handler vs Queue 1->1",
            ours_sync,
            raw_1,
            bar=0.1,
        ),
        Row("memory", "publish_many -> 1 vs Queue of JSON 1->1 (context)", ours_1, json_1),
        Row("memory", "publish_many -> 4 vs 4 Queues of JSON (context)", ours_4, json_4),
        # what isolating consumers by JSON costs by itself, with no log, ids or envelopes:
        Row("memory", "Queue of JSON 1->1 vs Queue 1->1 (context: JSON alone)", json_1, raw_1),
        Row("memory", "4 Queues of JSON vs 4 Queues (context: JSON alone)", json_4, raw_4),
    ]
