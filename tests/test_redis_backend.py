"""Redis backend specifics against a real ``redis-server``: URLs and secrets, exploring streams
nobody wrote for echo_lab, Crystal Echo interop byte for byte, retention, claiming, and
the coalescing of concurrent publishes."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis

import echo_lab as el
from echo_lab.backends.redis import BLOCK_MAX, SOCKET_TIMEOUT, RedisBackend
from echo_lab.errors import BackendConnectionError
from echo_lab.ids import parse_id
from tests.fixtures.redis import RedisServer
from tests.fixtures.servers import free_port
from tests.helpers import wait_until


@pytest.fixture
def db_url(redis_server: RedisServer) -> Iterator[tuple[str, redis.Redis]]:
    """A URL without prefix on a database of its own (flushed), and a raw client of it."""
    raw = redis_server.client(db=7)
    raw.flushdb()
    yield f"{redis_server.url[:-2]}/7", raw
    raw.flushdb()
    raw.close()


# -- URLs, options and secrets ---------------------------------------------------------------
def test_url_is_parsed_and_never_shows_the_password():
    b = RedisBackend.from_url("redis://alice:s3cr%40t@db.example:6380/2?prefix=app:")
    assert (b.host, b.port, b.db, b.username, b.prefix) == ("db.example", 6380, 2, "alice", "app:")
    assert b._password == "s3cr@t"
    assert "s3cr" not in b.url and "s3cr" not in repr(b)
    assert b.url == "redis://alice:***@db.example:6380/2?prefix=app%3A"
    assert RedisBackend.from_url("rediss://:pw@h").url == "rediss://:***@h:6379/0"
    assert RedisBackend.from_url("redis://h", cluster=True).cluster
    assert RedisBackend.from_url("redis://h?cluster=yes", prefix="p").prefix == "p"


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("redis://h:notaport/0", {}, "port"),
        ("redis://h/zero", {}, "database"),
        ("redis://h/0?bogus=1", {}, "bogus"),
        ("redis://h/0", {"bogus": 1}, "bogus"),
        ("redis://h/0", {"token": "t"}, "token"),
        ("redis://h/0?cluster=maybe", {}, "cluster"),
        ("redis://h/0", {"cluster": "yes"}, "cluster"),
        ("redis://h/3", {"cluster": True}, "database 0"),
        ("redis://:hunter2@h:99999/0", {}, "port"),
    ],
)
def test_malformed_urls_and_unknown_options_are_named_value_errors(url, options, match):
    with pytest.raises(ValueError, match=match) as info:
        el.connect(url, **options)
    assert "hunter2" not in str(info.value)


@pytest.mark.timeout(15)
def test_unreachable_server_is_a_connection_error_naming_host_and_port():
    port = free_port()  # nothing listens there
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}") as info:
        el.connect(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert isinstance(info.value, BackendConnectionError)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)


def test_password_protected_server(caplog):
    server = RedisServer(extra=["--requirepass", "hunter2"]).start()
    try:
        caplog.set_level(logging.DEBUG)
        with el.connect(f"redis://:hunter2@127.0.0.1:{server.port}/0") as stream:
            stream.publish("t", {"n": 1})
            assert [e.data for e in stream.take("t", 1, timeout=5, start="0")] == [{"n": 1}]
            assert "hunter2" not in repr(stream) and "hunter2" not in stream.backend.url
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{server.port}") as info:
            el.connect(f"redis://:wrong-pass@127.0.0.1:{server.port}/0")
        assert "wrong-pass" not in str(info.value)
        assert "hunter2" not in caplog.text and "wrong-pass" not in caplog.text
    finally:
        server.close()


def test_cluster_option_on_a_standalone_server_is_a_clear_error(redis_server):
    with pytest.raises(ConnectionError, match="not a Redis Cluster"):
        el.connect(redis_server.url, cluster=True)


# -- exploring streams written by other programs -------------------------------------------
def test_topics_are_the_stream_keys_found_by_scan(db_url):
    url, raw = db_url
    raw.set("a-string", "x")
    raw.lpush("a-list", "x")
    raw.xadd("s1", {"a": "1"})
    raw.xadd("app:s2", {"a": "1"})
    raw.xadd("we*ird[key]", {"a": "1"})
    with el.connect(url) as stream:
        assert stream.topics() == ["app:s2", "s1", "we*ird[key]"]
    with el.connect(url, prefix="app:") as stream:
        assert stream.topics() == ["s2"]
        stream.publish("s3", {"n": 1})
        assert stream.topics() == ["s2", "s3"]
    assert raw.exists("app:s3")
    with el.connect(url, prefix="we*") as stream:
        assert stream.topics() == ["ird[key]"]


def test_a_foreign_stream_decodes_and_can_be_introspected(db_url):
    url, raw = db_url
    first = raw.xadd("s", {"a": "1", "b": "x"}).decode()  # as `redis-cli XADD s * a 1 b x`
    raw.xadd("s", {"temp": "21.5"})
    raw.xgroup_create("s", "ext", "0")
    raw.xreadgroup("ext", "worker-1", {"s": ">"}, count=1)
    with el.connect(url) as stream:
        envs = stream.take("s", 2, timeout=5, start="0")
        assert [e.data for e in envs] == [{"a": "1", "b": "x"}, {"temp": "21.5"}]
        assert envs[0].id == first and envs[0].type is None
        info = stream.info("s")
        assert (info["length"], info["first_id"], info["groups"]) == (2, first, 1)
        (group,) = stream.groups("s")
        assert group["name"] == "ext" and group["pending"] == 1 and group["lag"] == 1
        (pending,) = stream.pending("s", "ext")
        assert (pending["id"], pending["consumer"], pending["deliveries"]) == (
            first,
            "worker-1",
            1,
        )
        assert stream.ack("s", "ext", [first]) == 1
        with pytest.raises(el.GroupError):
            stream.pending("s", "nope")
        raw.set("not-a-stream", "x")
        with pytest.raises(ValueError, match="not a stream"):
            stream.publish("not-a-stream", {"n": 1})


# -- Crystal Echo interop, byte for byte ------------------------------------------------------
def _echo_payload(fields: dict) -> bytes:
    """What Crystal Echo v0.1.1 writes: URL-safe padded base64 of compact JSON."""
    body = {"_id": str(uuid.uuid4()), "_time": "2020-10-17T18:09:38Z", **fields}
    return base64.urlsafe_b64encode(orjson.dumps(body))


def test_entries_written_by_crystal_echo_are_read(db_url):
    class RedisPing(el.Message):  # registered now: the last definition of a name wins
        name: str

    url, raw = db_url
    raw.xadd("RedisPing", {"payload": _echo_payload({"name": "from-crystal"})})
    raw.xadd("Marco", {"payload": _echo_payload({"name": "Marco", "n?": 1})})
    with el.connect(url) as stream:
        (env,) = stream.take("RedisPing", 1, timeout=5, start="0")
        assert env.type == "RedisPing" and env.data == RedisPing("from-crystal")
        (env,) = stream.take("Marco", 1, timeout=5, start="0")
        assert env.type == "Marco" and env.data == {"name": "Marco", "n?": 1}


def test_codec_echo_writes_what_crystal_echo_reads(db_url):
    class RedisPong(el.Message):
        name: str

    url, raw = db_url
    with el.connect(url, codec="echo") as stream:
        stream.publish(RedisPong("from-echo-lab"))
        stream.publish_many("RedisPong", [{"name": "a"}, {"name": "b"}])
    entries = raw.xrange("RedisPong")
    assert len(entries) == 3
    for (_, fields), name in zip(entries, ["from-echo-lab", "a", "b"], strict=True):
        assert list(fields) == [b"payload"]
        payload = fields[b"payload"]
        assert re.fullmatch(rb"[A-Za-z0-9_-]+=*", payload) and len(payload) % 4 == 0
        text = base64.urlsafe_b64decode(payload)
        body = orjson.loads(text)
        assert text == orjson.dumps(body)  # compact JSON, as Crystal's to_json writes it
        assert list(body)[:2] == ["_id", "_time"] and body["name"] == name
        assert uuid.UUID(body["_id"]).version == 4
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["_time"])


# -- retention, blocking, claiming ------------------------------------------------------------
def test_retention_is_exact_for_small_limits_and_approximate_for_large(redis_url):
    with el.connect(redis_url, maxlen=10) as small:
        small.publish_many("t", [{"n": i} for i in range(50)])
        assert small.info("t")["length"] == 10
    with el.connect(redis_url, maxlen=2000) as big:  # MAXLEN ~: whole nodes are dropped
        big.publish_many("u", [{"n": i} for i in range(5000)])
        assert 2000 <= big.info("u")["length"] < 5000


def test_blocking_reads_are_well_under_the_socket_timeout():
    assert BLOCK_MAX * 5 <= SOCKET_TIMEOUT


def test_an_idle_consumer_outlives_many_blocking_reads(redis_url):
    with el.connect(redis_url) as stream:
        got: list[int] = []
        sub = stream.on("t", lambda e: got.append(e.data["n"]))
        time.sleep(BLOCK_MAX * 2.5)
        stream.publish("t", {"n": 1})
        assert wait_until(lambda: got == [1])
        assert sub.stats.read_errors == 0
        sub.stop()


def test_claiming_pages_through_a_large_pending_list(redis_url):
    with el.connect(redis_url) as stream:
        ids = stream.publish_many("t", [{"n": i} for i in range(300)])
        run = stream.runtime.run
        alice = run(stream.backend.group_cursor("t", "g", "alice", "0", 60))
        assert len(run(alice.read(500, 1))) == 300  # and alice dies without acking
        bob = run(stream.backend.group_cursor("t", "g", "bob", "$", 0.05))
        time.sleep(0.1)
        got: list[tuple[str, int]] = []
        while len(got) < 300:
            batch = run(bob.read(64, 2))
            assert batch, "claiming stalled"
            got += [(i, n) for i, _, n in batch]
            run(bob.ack([i for i, _, _ in batch]))
        assert sorted((i for i, _ in got), key=parse_id) == ids and {n for _, n in got} == {2}
        run(bob.close())
        assert stream.pending("t", "g") == []
        run(alice.close())


def test_entries_deleted_while_pending_are_dropped_not_redelivered(redis_url, redis_server):
    with el.connect(redis_url) as stream:
        ids = stream.publish_many("t", [{"n": i} for i in range(5)])
        run = stream.runtime.run
        first = run(stream.backend.group_cursor("t", "g", "alice", "0", 60))
        assert len(run(first.read(10, 1))) == 5
        run(first.close())
        raw = redis_server.client()
        raw.xdel(f"{stream.backend.prefix}t", ids[1], ids[3])
        raw.close()
        again = run(stream.backend.group_cursor("t", "g", "alice", "0", 60))
        batch = run(again.read(10, 1))  # alice's own pending entries first, once more
        assert [(i, n) for i, _, n in batch] == [(ids[0], 2), (ids[2], 2), (ids[4], 2)]
        run(again.ack([i for i, _, _ in batch]))
        run(again.close())
        assert stream.pending("t", "g") == []


# -- publishing paths --------------------------------------------------------------------------
def test_concurrent_async_publishes_are_coalesced_into_pipelines(redis_url):
    with el.connect(redis_url) as stream:
        backend = stream.backend
        flushes: list[int] = []
        original = backend._flush_node

        async def counting(addr, items):
            flushes.append(len(items))
            await original(addr, items)

        backend._flush_node = counting

        async def many() -> list[str]:
            return await asyncio.gather(*(stream.apublish("t", {"n": i}) for i in range(200)))

        ids = stream.runtime.run(many())
        assert len(set(ids)) == 200 and sum(flushes) == 200
        assert len(flushes) <= 4  # one pipeline per loop iteration, not one per message
        got = stream.take("t", 200, timeout=5, start="0")
        assert sorted(e.data["n"] for e in got) == list(range(200))


def test_concurrent_sync_publishes_from_threads_are_coalesced(redis_url):
    with el.connect(redis_url) as stream:
        sync = stream.backend._sync
        sends: list[int] = []
        original = sync._send

        def counting(addr, items):
            sends.append(len(items))
            original(addr, items)

        sync._send = counting
        barrier = threading.Barrier(8)

        def work(k: int) -> None:
            barrier.wait()
            for i in range(100):
                stream.publish("t", {"k": k, "i": i})

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(sends) == 800 and len(sends) < 800  # some went out together
        got = stream.take("t", 800, timeout=5, start="0")
        for k in range(8):  # each thread's order is kept
            assert [e.data["i"] for e in got if e.data["k"] == k] == list(range(100))


def test_sync_publish_does_not_wait_for_the_runtime_loop(redis_url):
    with el.connect(redis_url) as stream:
        blocked = threading.Event()
        release = threading.Event()

        async def hog() -> None:
            blocked.set()
            release.wait(10)  # blocks the runtime loop's thread

        stream.runtime.spawn(hog())
        assert blocked.wait(5)
        try:
            ids = [stream.publish("t", {"n": i}) for i in range(20)]  # no hop to the loop
            ids += stream.publish_many("t", [{"n": 20}])
            assert len(set(ids)) == 21 and not release.is_set()
        finally:
            release.set()
        assert len(stream.take("t", 21, timeout=5, start="0")) == 21
