"""Faults injected into a real ``redis-server`` of the test's own; each test fails if a
message is lost (or, for fan-out, skipped or duplicated)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import orjson
import pytest

import echo_lab as el
from tests.fixtures.redis import RedisServer
from tests.helpers import wait_until


def _publish_retrying(stream: el.Stream, topic: str, data: dict[str, Any]) -> str:
    """What a careful producer does while the server is down: retry until it is back."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return stream.publish(topic, data)
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stream_ids(server: RedisServer, key: str) -> list[str]:
    raw = server.client()
    try:
        return [i.decode() for i, _ in raw.xrange(key)]
    finally:
        raw.close()


def test_killed_connections_lose_and_skip_nothing(fault_redis: RedisServer):
    with el.connect(fault_redis.url) as stream:
        fan: list[str] = []
        grp: list[str] = []
        sub_fan = stream.on("t", lambda e: fan.append(e.id))
        sub_grp = stream.on("t", lambda e: grp.append(e.id), group="g")
        killer = fault_redis.client()
        published: list[str] = []
        kills = 0
        for i in range(1500):
            published.append(stream.publish("t", {"n": i}))  # producers survive kills too
            if i % 150 == 75:
                kills += killer.client_kill_filter(_type="normal", skipme=True)
        killer.close()
        assert kills >= 10  # consumers' and producers' connections were killed
        assert wait_until(lambda: set(published) <= set(fan) and set(published) <= set(grp), 20)
        stored = _stream_ids(fault_redis, "t")
        assert wait_until(lambda: len(fan) == len(stored))
        assert fan == stored  # fan-out: every entry once, in order; none skipped
        assert set(grp) == set(stored)  # group: every entry handled (at least once)
        assert wait_until(lambda: stream.pending("t", "g") == [])
        assert sub_fan.running and sub_grp.running
        sub_fan.stop()
        sub_grp.stop()


@pytest.mark.slow
def test_consumers_survive_a_server_restart_with_aof(fault_redis: RedisServer):
    with el.connect(fault_redis.url) as stream:
        handled: list[int] = []
        fan: list[int] = []

        def slow(env: el.Envelope) -> None:
            time.sleep(0.001)  # so that the restart lands mid-stream
            handled.append(env.data["n"])

        sub = stream.on("t", slow, group="g", claim_idle=1)
        sub_fan = stream.on("t", lambda e: fan.append(e.data["n"]))
        stream.publish_many("t", [{"n": i} for i in range(300)])
        assert wait_until(lambda: len(handled) > 20)
        fault_redis.restart()  # SIGTERM (the AOF is flushed), then the same port again
        for i in range(300, 400):
            _publish_retrying(stream, "t", {"n": i})
        assert wait_until(lambda: set(range(400)) <= set(handled), timeout=30)
        assert wait_until(lambda: set(range(400)) <= set(fan), timeout=30)
        assert sorted(set(fan)) == fan  # fan-out went on from its last id: no gap, no repeat
        assert sub.stats.read_errors + sub_fan.stats.read_errors >= 1
        assert sub.running and sub_fan.running
        assert wait_until(lambda: stream.pending("t", "g") == [], timeout=10)
        # what was written before the restart is still there for a group created after it
        late = stream.take("t", 400, timeout=10, start="0", group="late")
        assert [e.data["n"] for e in late] == list(range(400))
        sub.stop()
        sub_fan.stop()


_DOOMED = textwrap.dedent(
    """
    import sys, time
    import echo_lab as el
    stream = el.connect(sys.argv[1])
    def hold(env):
        print(env.id, flush=True)
        time.sleep(600)
    stream.on("jobs", hold, group="g", consumer="doomed", start="0")
    time.sleep(600)
    """
)


def test_a_dead_members_pending_entries_are_claimed_by_another(fault_redis: RedisServer):
    with el.connect(fault_redis.url) as stream:
        ids = stream.publish_many("jobs", [{"job": i} for i in range(3)])
        proc = subprocess.Popen(
            [sys.executable, "-c", _DOOMED, fault_redis.url],
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        try:
            first = proc.stdout.readline().strip()  # type: ignore[union-attr]
            assert first == ids[0]
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # it dies holding all three, unacknowledged
            proc.wait(10)
        pending = stream.pending("jobs", "g")
        assert [(p["id"], p["consumer"]) for p in pending] == [(i, "doomed") for i in ids]
        got: list[tuple[str, int]] = []
        sub = stream.on(
            "jobs",
            lambda e: got.append((e.id, e.data["job"])),
            group="g",
            consumer="heir",
            claim_idle=0.3,
        )
        assert wait_until(lambda: len(got) == 3, timeout=10)
        assert got == [(i, n) for n, i in enumerate(ids)]
        assert wait_until(lambda: stream.pending("jobs", "g") == [])
        sub.stop()


def test_a_failing_handler_is_retried_then_dead_lettered(fault_redis: RedisServer):
    with el.connect(fault_redis.url) as stream:
        handled: list[int] = []

        def handler(env: el.Envelope) -> None:
            if env.data["n"] == 2:
                raise RuntimeError("cannot handle 2")
            handled.append(env.data["n"])

        sub = stream.on("t", handler, group="g", claim_idle=0.1, max_deliveries=3)
        ids = stream.publish_many("t", [{"n": i} for i in range(5)])
        assert wait_until(lambda: sub.stats.dead_lettered == 1, timeout=15)
        assert sorted(handled) == [0, 1, 3, 4] and sub.stats.errors == 3
        raw = fault_redis.client()
        ((_, fields),) = raw.xrange("t.dead")
        raw.close()
        assert orjson.loads(fields[b"data"]) == {"n": 2}
        headers = orjson.loads(fields[b"headers"])
        assert "cannot handle 2" in headers["error"] and headers["source_id"] == ids[2]
        assert headers["deliveries"] == "3"
        assert wait_until(lambda: stream.pending("t", "g") == [])
        stream.publish("t", {"n": 5})
        assert wait_until(lambda: 5 in handled)
        sub.stop()


@pytest.mark.parametrize("group", [None, "g"])
def test_poison_entries_are_dead_lettered_and_the_consumer_goes_on(
    fault_redis: RedisServer, group: str | None
):
    with el.connect(fault_redis.url) as stream:
        got: list[int] = []
        sub = stream.on("t", lambda e: got.append(e.data["n"]), group=group)
        raw = fault_redis.client()
        stream.publish("t", {"n": 1})
        bad = [
            raw.xadd("t", {"payload": "%%% not base64 %%%"}),  # a broken Crystal Echo entry
            raw.xadd("t", {"data": b"\xff\xfe{"}),  # broken echo_lab JSON
        ]
        stream.publish("t", {"n": 2})
        assert wait_until(lambda: got == [1, 2], timeout=10)
        assert wait_until(lambda: sub.stats.undecodable == 2)
        assert wait_until(lambda: raw.xlen("t.dead") == 2)
        dead = raw.xrange("t.dead")
        raw.close()
        assert dead[0][1][b"payload"] == b"%%% not base64 %%%"
        assert dead[1][1][b"data"] == b"\xff\xfe{"
        assert [f[b"dead.source_id"] for _, f in dead] == bad
        if group:
            assert wait_until(lambda: stream.pending("t", group) == [])
        stream.publish("t", {"n": 3})
        assert wait_until(lambda: got == [1, 2, 3])
        sub.stop()


@pytest.mark.parametrize("how", ["DEL", "XGROUP DESTROY"])
def test_a_stream_or_group_deleted_under_a_consumer_is_recovered_from(
    fault_redis: RedisServer, how: str
):
    with el.connect(fault_redis.url) as stream:
        got: list[int] = []
        sub = stream.on("t", lambda e: got.append(e.data["n"]), group="g")
        stream.publish("t", {"n": 1})
        assert wait_until(lambda: got == [1])
        raw = fault_redis.client()
        if how == "DEL":
            raw.delete("t")
        else:
            raw.xgroup_destroy("t", "g")
        raw.close()
        assert wait_until(lambda: sub.stats.read_errors >= 1, timeout=10)  # noticed, not silent
        assert "no longer exists" in (sub.stats.last_error or "")
        stream.publish("t", {"n": 2})
        assert wait_until(lambda: 2 in got, timeout=15)
        assert sub.running
        sub.stop()


def test_a_deleted_stream_under_an_iterator_is_a_clear_error(fault_redis: RedisServer):
    with el.connect(fault_redis.url) as stream:
        stream.publish("t", {"n": 1})
        it = stream.iter("t", start="0", group="g", timeout=30)
        assert next(it).data == {"n": 1}
        raw = fault_redis.client()
        raw.delete("t")
        raw.close()
        with pytest.raises(el.GroupError, match="no longer exists"):
            next(it)


@pytest.mark.timeout(15)
def test_a_stopped_server_is_a_clear_connection_error(fault_redis: RedisServer):
    with el.connect(fault_redis.url) as stream:
        fault_redis.stop()
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{fault_redis.port}"):
            stream.publish("t", {"n": 1})
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{fault_redis.port}"):
            stream.topics()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{fault_redis.port}"):
        el.connect(fault_redis.url)
