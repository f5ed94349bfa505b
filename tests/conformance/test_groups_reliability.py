"""Conformance: groups (work queues), acknowledgement, re-delivery, dead letters, bad entries,
introspection and bad input. Runs on every backend in ``BACKENDS``."""

from __future__ import annotations

import threading
import time

import pytest

import echo_lab as el
from tests.helpers import wait_until


def test_group_members_split_the_messages(stream, connect, topic):
    other = connect()
    a: list[int] = []
    b: list[int] = []
    sub_a = stream.on(topic, lambda e: a.append(e.data["n"]), group="workers")
    sub_b = other.on(topic, lambda e: b.append(e.data["n"]), group="workers")
    for i in range(200):  # one at a time so that both members get work
        stream.publish(topic, {"n": i})
    assert wait_until(lambda: len(a) + len(b) == 200, timeout=10)
    time.sleep(0.1)
    assert sorted(a + b) == list(range(200)) and not set(a) & set(b)
    assert wait_until(lambda: stream.pending(topic, "workers") == [])
    groups = stream.groups(topic)
    assert [g["name"] for g in groups] == ["workers"]
    assert groups[0]["consumers"] >= 2 and groups[0]["pending"] == 0
    sub_a.stop()
    sub_b.stop()


def test_two_groups_each_get_every_message(stream, topic):
    seen: dict[str, list[int]] = {"g1": [], "g2": []}
    subs = [stream.on(topic, lambda e, g=g: seen[g].append(e.data["n"]), group=g) for g in seen]
    stream.publish_many(topic, [{"n": i} for i in range(50)])
    assert wait_until(lambda: all(len(v) == 50 for v in seen.values()), timeout=10)
    for sub in subs:
        sub.stop()


def test_group_start_zero_reads_the_backlog(stream, topic):
    stream.publish_many(topic, [{"n": i} for i in range(5)])
    got = stream.take(topic, 5, timeout=5, start="0", group="late")
    assert [e.data["n"] for e in got] == list(range(5))
    assert stream.pending(topic, "late") == []  # take acknowledges what it returned


def test_a_stuck_members_messages_are_claimed_by_another(stream, connect, topic):
    release = threading.Event()
    stuck_got: list[str] = []
    healthy_got: list[str] = []

    def stuck(env: el.Envelope) -> None:
        stuck_got.append(env.id)
        release.wait(10)

    other = connect()
    sub_stuck = stream.on(topic, stuck, group="g", consumer="stuck", claim_idle=0.3)
    (msg_id,) = [stream.publish(topic, {"job": 1})]
    assert wait_until(lambda: stuck_got == [msg_id])
    pending = stream.pending(topic, "g")
    assert [(p["id"], p["consumer"], p["deliveries"]) for p in pending] == [(msg_id, "stuck", 1)]
    sub_ok = other.on(
        topic, lambda e: healthy_got.append(e.id), group="g", consumer="ok", claim_idle=0.3
    )
    assert wait_until(lambda: healthy_got == [msg_id], timeout=10)
    release.set()
    assert wait_until(lambda: stream.pending(topic, "g") == [], timeout=10)
    sub_ok.stop()
    sub_stuck.stop()


def test_handler_failure_is_retried_then_dead_lettered_and_consumer_goes_on(stream, topic):
    attempts: dict[int, int] = {}
    handled: list[int] = []

    def flaky(env: el.Envelope) -> None:
        n = env.data["n"]
        attempts[n] = attempts.get(n, 0) + 1
        if n == 1:
            raise RuntimeError("boom on 1")
        handled.append(n)

    sub = stream.on(topic, flaky, group="g", claim_idle=0.2, max_deliveries=3)
    stream.publish_many(topic, [{"n": i} for i in range(3)])
    assert wait_until(lambda: sub.stats.dead_lettered == 1, timeout=15)
    assert sorted(handled) == [0, 2] and attempts[1] == 3
    assert sub.stats.errors == 3 and sub.stats.handled == 2
    assert "boom on 1" in (sub.stats.last_error or "")
    dead = stream.take(f"{topic}.dead", 1, timeout=5, start="0")
    assert dead[0].data == {"n": 1}
    assert "boom on 1" in dead[0].headers["error"]
    assert wait_until(lambda: stream.pending(topic, "g") == [])
    stream.publish(topic, {"n": 3})  # still consuming
    assert wait_until(lambda: 3 in handled)
    sub.stop()


def test_fan_out_handler_failure_never_kills_the_subscriber(stream, topic):
    handled: list[int] = []

    def sometimes(env: el.Envelope) -> None:
        if env.data["n"] % 2:
            raise ValueError(f"odd {env.data['n']}")
        handled.append(env.data["n"])

    sub = stream.on(topic, sometimes, max_deliveries=2)
    stream.publish_many(topic, [{"n": i} for i in range(6)])
    assert wait_until(lambda: sub.stats.dead_lettered == 3, timeout=10)
    assert handled == [0, 2, 4] and sub.stats.errors == 6 and sub.running
    dead = stream.take(f"{topic}.dead", 3, timeout=5, start="0")
    assert [e.data["n"] for e in dead] == [1, 3, 5]
    sub.stop()


def test_async_handlers_work_and_their_failures_are_counted(stream, topic):
    got: list[int] = []

    async def handler(env: el.Envelope) -> None:
        if env.data["n"] == 0:
            raise KeyError("zero")
        got.append(env.data["n"])

    sub = stream.on(topic, handler, max_deliveries=1)
    stream.publish_many(topic, [{"n": i} for i in range(3)])
    assert wait_until(lambda: got == [1, 2] and sub.stats.errors == 1)
    sub.stop()


@pytest.mark.parametrize("group", [None, "g"])
def test_undecodable_entry_is_skipped_counted_and_dead_lettered(stream, topic, group):
    got: list[int] = []
    sub = stream.on(topic, lambda e: got.append(e.data["n"]), group=group)
    stream.publish(topic, {"n": 1})
    stream.runtime.run(stream.backend.append(topic, [{"data": b"{not json"}], 100))
    stream.publish(topic, {"n": 2})
    assert wait_until(lambda: got == [1, 2], timeout=10)
    assert sub.stats.undecodable == 1
    dead = stream.take(f"{topic}.dead", 1, timeout=5, start="0")
    assert len(dead) == 1
    if group:
        assert wait_until(lambda: stream.pending(topic, group) == [])
    sub.stop()


@pytest.mark.parametrize("reader", ["take", "iter", "subscribe"])
def test_iterators_skip_and_dead_letter_an_undecodable_entry(stream, topic, reader):
    stream.publish(topic, {"n": 1})
    stream.runtime.run(stream.backend.append(topic, [{"data": b"{not json"}], 100))
    stream.publish(topic, {"n": 2})
    if reader == "take":
        got = stream.take(topic, 2, timeout=5, start="0")
    elif reader == "iter":
        got = list(stream.iter(topic, start="0", timeout=0.5))
    else:

        async def collect() -> list[el.Envelope]:
            return [env async for env in stream.subscribe(topic, start="0", timeout=0.5)]

        got = stream.runtime.run(collect())
    assert [env.data["n"] for env in got] == [1, 2]
    (dead,) = stream.take(f"{topic}.dead", 1, timeout=5, start="0")
    assert dead.data["data"] == "{not json"
    assert dead.data["dead.error"].startswith("undecodable entry")


def test_entries_written_by_other_programs_decode_to_dicts(stream, topic):
    stream.runtime.run(stream.backend.append(topic, [{"a": b"1", "b": b"x"}], 100))
    (env,) = stream.take(topic, 1, timeout=5, start="0")
    assert env.data == {"a": "1", "b": "x"} and env.type is None


def test_crystal_echo_format_both_ways(connect, stream):
    class Ping(el.Message):
        name: str

    echo = connect(codec="echo")
    echo.publish(Ping("from-echo-codec"))
    stream.publish(Ping("from-json-codec"))
    got = stream.take("Ping", 2, timeout=5, start="0")
    assert [e.data for e in got] == [Ping("from-echo-codec"), Ping("from-json-codec")]
    raw = stream.runtime.run(stream.backend.range("Ping", "-", "+", 1))
    (fields,) = [f for _, f in raw]
    assert list(fields) == ["payload"]


def test_introspection(stream, topic):
    assert stream.info(topic)["length"] == 0
    ids = stream.publish_many(topic, [{"n": i} for i in range(4)])
    info = stream.info(topic)
    assert (info["length"], info["first_id"], info["last_id"]) == (4, ids[0], ids[-1])
    assert topic in stream.topics()
    assert isinstance(stream.topics(), list)
    got = stream.take(topic, 2, timeout=5, start="0", group="g")
    assert len(got) == 2
    (group,) = stream.groups(topic)
    assert group["name"] == "g" and group["lag"] == 2
    assert stream.info(topic)["groups"] == 1
    history = stream.history(topic, ids[1], ids[2])
    assert [e.id for e in history] == ids[1:3]


def test_range_reverse_gives_the_newest_first(stream, topic):
    ids = stream.publish_many(topic, [{"n": i} for i in range(10)])

    def rng(*args, **kw):
        return [i for i, _ in stream.runtime.run(stream.backend.range(topic, *args, **kw))]

    assert rng(reverse=True) == ids[::-1]
    assert rng(count=3, reverse=True) == ids[:-4:-1]  # the newest three
    assert rng(ids[2], ids[6], 2, reverse=True) == [ids[6], ids[5]]
    assert rng(ids[2], ids[6], 2) == [ids[2], ids[3]]  # forward: the oldest of the range
    assert rng(ids[9], "+", 5, reverse=True) == [ids[9]]
    assert rng(count=0, reverse=True) == []
    (entry,) = stream.runtime.run(stream.backend.range(topic, count=1, reverse=True))
    assert entry[0] == ids[-1] and entry[1]  # with its fields
    assert stream.runtime.run(stream.backend.range(f"{topic}-absent", reverse=True)) == []


def test_ack_and_claim_by_hand(stream, topic):
    stream.publish_many(topic, [{"n": i} for i in range(3)])
    cursor = stream.runtime.run(stream.backend.group_cursor(topic, "g", "alice", "0", 60))
    batch = stream.runtime.run(cursor.read(10, 1))
    ids = [i for i, _, _ in batch]
    assert len(ids) == 3
    assert [p["consumer"] for p in stream.pending(topic, "g")] == ["alice"] * 3
    assert stream.claim(topic, "g", "bob", ids[:1]) == ids[:1]
    pending = {p["id"]: p for p in stream.pending(topic, "g")}
    assert pending[ids[0]]["consumer"] == "bob" and pending[ids[0]]["deliveries"] == 2
    assert stream.ack(topic, "g", ids) == 3
    assert stream.pending(topic, "g") == []
    assert stream.ack(topic, "g", ids) == 0  # acknowledged already
    assert stream.ack(topic, "no-such-group", ids) == 0
    stream.runtime.run(cursor.close())


def test_deleting_a_topic_under_a_group_consumer_recovers(stream, topic):
    got: list[int] = []
    sub = stream.on(topic, lambda e: got.append(e.data["n"]), group="g")
    stream.publish(topic, {"n": 1})
    assert wait_until(lambda: got == [1])
    stream.delete(topic)
    assert topic not in stream.topics() or stream.info(topic)["length"] == 0

    def republish_until_seen() -> bool:
        stream.publish(topic, {"n": 2})
        return wait_until(lambda: 2 in got, timeout=1)

    assert wait_until(republish_until_seen, timeout=20, interval=0)
    assert sub.running
    sub.stop()


def test_bad_urls_and_options_are_clear_value_errors():
    with pytest.raises(ValueError, match="unknown URL scheme 'kafka'"):
        el.connect("kafka://localhost:9092")
    with pytest.raises(ValueError, match="malformed"):
        el.connect("localhost:6379")
    with pytest.raises(ValueError, match="bogus"):
        el.connect("memory://", bogus=1)
    with pytest.raises(ValueError, match="codec"):
        el.connect("memory://", codec="pickle")
    with pytest.raises(ValueError, match="maxlen"):
        el.connect("memory://", maxlen=0)


def test_a_small_batch_splits_a_backlog_between_slow_members(stream, connect, topic):
    other = connect()
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def worker(name: str):
        def handle(env: el.Envelope) -> None:
            time.sleep(0.01)  # slow work
            seen[name].append(env.data["n"])

        return handle

    subs = [
        stream.on(topic, worker("a"), group="q", batch=1),
        other.on(topic, worker("b"), group="q", batch=1),
    ]
    stream.publish_many(topic, [{"n": i} for i in range(40)])
    assert wait_until(lambda: len(seen["a"]) + len(seen["b"]) == 40, timeout=20)
    assert seen["a"] and seen["b"]  # both members worked
    assert sorted(seen["a"] + seen["b"]) == list(range(40))
    for sub in subs:
        sub.stop()


def test_a_stopped_subscription_calls_its_handler_no_more(stream, topic):
    release = threading.Event()
    seen: list[int] = []

    def blocked(env: el.Envelope) -> None:
        seen.append(env.data["n"])
        release.wait(10)

    sub = stream.on(topic, blocked, group="g")
    stream.publish_many(topic, [{"n": i} for i in range(5)])
    assert wait_until(lambda: seen == [0])
    stopper = threading.Thread(target=sub.stop)
    stopper.start()
    assert wait_until(lambda: not sub.running)
    release.set()
    stopper.join(10)
    time.sleep(0.2)
    assert seen == [0]
    # none was acknowledged: a new member gets all five (claimed, or never delivered yet)
    again = stream.take(topic, 5, timeout=10, group="g", claim_idle=0.2)
    assert sorted(e.data["n"] for e in again) == [0, 1, 2, 3, 4]
