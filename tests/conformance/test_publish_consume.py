"""Conformance: publishing, ids, start positions, fan-out, retention, typed messages.

Written once against the ``Stream`` contract; runs on every backend in ``BACKENDS``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest

import echo_lab as el
from echo_lab.ids import parse_id
from tests.helpers import wait_until


class World(el.Message):
    name: str


class Marco(el.Message):
    name: str = "Marco"


class Thermometer(el.Message):
    topic = "readings"
    sensor: str
    temp: float


def test_publish_returns_increasing_ids_and_take_reads_them_in_order(stream, topic):
    ids = [stream.publish(topic, {"n": i}) for i in range(20)]
    keys = [parse_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 20
    got = stream.take(topic, 20, timeout=5, start="0")
    assert [e.id for e in got] == ids
    assert [e.data for e in got] == [{"n": i} for i in range(20)]
    assert all(e.topic == topic and e.type is None and e.headers == {} for e in got)


def test_envelope_timestamp_is_utc_and_matches_publish_time(stream, topic):
    before = datetime.now(UTC)
    stream.publish(topic, {"a": 1})
    (env,) = stream.take(topic, 1, timeout=5, start="0")
    assert env.ts.tzinfo is not None and env.ts.utcoffset().total_seconds() == 0
    assert abs((env.ts - before).total_seconds()) < 5


def test_publish_many_returns_one_id_per_row_in_order(stream, topic):
    rows = [{"i": i, "x": "y" * (i % 7)} for i in range(2500)]
    ids = stream.publish_many(topic, rows)
    assert len(ids) == 2500 and ids == sorted(ids, key=parse_id)
    got = stream.take(topic, 2500, timeout=10, start="0")
    assert [e.data for e in got] == rows


def test_headers_round_trip(stream, topic):
    stream.publish(topic, {"a": 1}, headers={"trace": "abc"})
    (env,) = stream.take(topic, 1, timeout=5, start="0")
    assert env.headers == {"trace": "abc"}


def test_start_positions(stream, topic):
    first = [stream.publish(topic, {"n": i}) for i in range(3)]
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    later = [stream.publish(topic, {"n": i}) for i in range(3, 6)]
    assert [e.data["n"] for e in stream.take(topic, 10, timeout=1, start="0")] == list(range(6))
    after_id = stream.take(topic, 10, timeout=1, start=first[-1])
    assert [e.id for e in after_id] == later
    since = stream.take(topic, 10, timeout=1, start=middle)
    assert [e.id for e in since] == later
    # "$": only what is published after subscribing
    got: list[el.Envelope] = []
    sub = stream.on(topic, got.append, start="$")
    new_id = stream.publish(topic, {"n": 6})
    assert wait_until(lambda: len(got) == 1)
    time.sleep(0.1)
    assert [e.id for e in got] == [new_id]
    sub.stop()


def test_invalid_start_is_a_clear_value_error(stream, topic):
    for bad in ("yesterday", "12-ab", "-5"):
        with pytest.raises(ValueError, match="start position"):
            stream.take(topic, 1, timeout=0.1, start=bad)
    with pytest.raises(ValueError, match="start position"):
        stream.on(topic, print, start="nope")


def test_fan_out_every_subscriber_gets_every_message(stream, connect, topic):
    other = connect()
    seen: list[list[int]] = [[], [], []]
    subs = [
        stream.on(topic, lambda e, s=seen[0]: s.append(e.data["n"])),
        stream.on(topic, lambda e, s=seen[1]: s.append(e.data["n"])),
        other.on(topic, lambda e, s=seen[2]: s.append(e.data["n"])),
    ]
    stream.publish_many(topic, [{"n": i} for i in range(300)])
    assert wait_until(lambda: all(len(s) == 300 for s in seen), timeout=10)
    assert all(s == list(range(300)) for s in seen)
    for sub in subs:
        sub.stop()


def test_fan_in_many_producers_one_consumer(stream, connect, topic):
    producers = [connect() for _ in range(3)]
    got: list[tuple[int, int]] = []
    sub = stream.on(topic, lambda e: got.append((e.data["p"], e.data["i"])))

    def produce(p: int) -> None:
        for i in range(50):
            producers[p].publish(topic, {"p": p, "i": i})

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_until(lambda: len(got) == 150, timeout=10)
    for p in range(3):  # per-producer order is kept
        assert [i for q, i in got if q == p] == list(range(50))
    sub.stop()


def test_retention_keeps_the_newest_maxlen(connect, topic):
    small = connect(maxlen=10)
    ids = small.publish_many(topic, [{"n": i} for i in range(40)])
    info = small.info(topic)
    # Redis trims approximately (MAXLEN ~): never fewer than maxlen, bounded above.
    assert 10 <= info["length"] <= 40
    assert info["last_id"] == ids[-1]
    got = small.take(topic, 100, timeout=1, start="0")
    assert [e.data["n"] for e in got] == list(range(40 - len(got), 40))


def test_info_added_counts_every_entry_ever_appended(connect, topic):
    small = connect(maxlen=10)
    assert small.info(topic)["added"] == 0  # absent
    small.publish_many(topic, [{"n": i} for i in range(4)])
    assert small.info(topic)["added"] == 4
    small.publish_many(topic, [{"n": i} for i in range(30)])
    for i in range(6):
        small.publish(topic, {"n": i})
    info = small.info(topic)
    assert info["added"] == 40  # trimmed entries count too
    assert info["length"] == 10  # maxlen <= 1000: trimmed exactly everywhere
    (info,) = small.runtime.run(small.backend.infos([topic]))
    assert info["added"] == 40 and info["topic"] == topic


def test_infos_of_several_topics_in_order(stream, topic):
    names = [f"{topic}-{i}" for i in range(5)]
    for i, name in enumerate(names):
        stream.publish_many(name, [{"n": n} for n in range(i)])
    infos = stream.runtime.run(stream.backend.infos([*names, f"{topic}-absent"]))
    assert [i["topic"] for i in infos] == [*names, f"{topic}-absent"]
    assert [i["length"] for i in infos] == [0, 1, 2, 3, 4, 0]
    assert [i["added"] for i in infos] == [0, 1, 2, 3, 4, 0]
    assert stream.runtime.run(stream.backend.infos([])) == []


def test_typed_messages_come_back_as_instances(stream):
    got: list[el.Envelope] = []
    sub = stream.on("readings", got.append)
    stream.publish(Thermometer("s1", 21.5))
    assert wait_until(lambda: len(got) == 1)
    env = got[0]
    assert env.topic == "readings" and env.type == "Thermometer"
    assert isinstance(env.data, Thermometer) and env.data == Thermometer("s1", 21.5)
    sub.stop()


def test_echo_readme_world_and_marco_on_one_producer_and_one_consumer(stream):
    class WorldConsumer(el.Consumer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.received: list[World | Marco] = []

        def on(self, msg: World | Marco) -> None:
            self.received.append(msg)

    assert WorldConsumer.subscribed_topics() == ["World", "Marco"]
    consumer = WorldConsumer(stream).start()
    producer = el.Producer(stream)
    producer.publish(World("x"))
    producer.publish(Marco())
    producer.publish(World("y"))
    assert wait_until(lambda: len(consumer.received) == 3)
    assert sorted(map(repr, consumer.received)) == sorted(
        map(repr, [World("x"), Marco(), World("y")])
    )
    assert consumer.stats.handled == 3
    consumer.stop()


def test_redefining_a_message_class_replaces_it(stream, topic):
    class Note(el.Message):
        text: str

    class Note(el.Message):  # noqa: F811 - a re-run notebook cell
        text: str
        level: int = 0

    stream.publish(topic, Note("hi", 2))
    (env,) = stream.take(topic, 1, timeout=5, start="0")
    assert isinstance(env.data, Note) and env.data.level == 2


def test_consumers_cannot_corrupt_each_other_or_the_producer(stream, topic):
    row = {"tags": ["a"], "n": 1}
    first: list[el.Envelope] = []
    second: list[el.Envelope] = []

    def vandal(env: el.Envelope) -> None:
        env.data["tags"].append("vandal")
        env.data["n"] = 99
        first.append(env)

    subs = [stream.on(topic, vandal), stream.on(topic, second.append)]
    time.sleep(0.05)
    stream.publish(topic, row)
    row["n"] = 2  # the producer changing its dict after publishing changes nothing
    assert wait_until(lambda: first and second)
    time.sleep(0.05)
    assert second[0].data == {"tags": ["a"], "n": 1}
    assert stream.take(topic, 1, timeout=5, start="0")[0].data == {"tags": ["a"], "n": 1}
    for sub in subs:
        sub.stop()


def test_non_serialisable_data_is_a_clear_type_error(stream, topic):
    with pytest.raises(TypeError, match=topic):
        stream.publish(topic, {"when": object()})
    with pytest.raises(TypeError, match="dict or a Message"):
        stream.publish(topic, [1, 2, 3])
    with pytest.raises(TypeError, match=topic):
        stream.publish_many(topic, [{"ok": 1}, {"bad": {1, 2}}])
    assert stream.info(topic)["length"] == 0  # nothing half-published


def test_iter_ends_after_idle_timeout(stream, topic):
    stream.publish_many(topic, [{"n": i} for i in range(5)])
    t0 = time.monotonic()
    got = [e.data["n"] for e in stream.iter(topic, start="0", timeout=0.3)]
    assert got == list(range(5))
    assert time.monotonic() - t0 < 5


def test_take_returns_what_arrived_by_the_timeout(stream, topic):
    stream.publish(topic, {"n": 1})
    t0 = time.monotonic()
    got = stream.take(topic, 10, timeout=0.5, start="0")
    assert len(got) == 1 and 0.4 < time.monotonic() - t0 < 5


def test_async_api_from_another_event_loop(stream, topic):
    async def main() -> None:  # a loop other than the runtime's: every call hops to it
        ids = [await stream.apublish(topic, {"n": i}) for i in range(3)]
        ids += await stream.apublish_many(topic, [{"n": 3}, {"n": 4}])
        got = []
        async for env in stream.subscribe(topic, start="0", timeout=0.5):
            got.append(env.id)
        assert got == ids
        assert len(await stream.atake(topic, 5, timeout=2, start="0")) == 5
        assert topic in await stream.atopics()

    asyncio.run(main())


def test_sync_calls_work_from_threads_and_inside_handlers(stream, topic):
    echoed: list[el.Envelope] = []
    out = f"{topic}.out"

    def relay(env: el.Envelope) -> None:  # a sync publish inside a handler
        stream.publish(out, {"echo": env.data["n"]})

    sub = stream.on(topic, relay)
    sink = stream.on(out, echoed.append)
    threads = [
        threading.Thread(target=lambda k=k: stream.publish(topic, {"n": k})) for k in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_until(lambda: len(echoed) == 8, timeout=10)
    assert sorted(e.data["echo"] for e in echoed) == list(range(8))
    sub.stop()
    sink.stop()


def test_close_stops_everything(connect, topic):
    s = connect()
    got: list[el.Envelope] = []
    sub = s.on(topic, got.append)
    s.close()
    assert not sub.running
    with pytest.raises(Exception):  # noqa: B017 - any error is fine, silence is not
        s.publish(topic, {"late": True})
