"""The broker against hostile, broken and slow clients (raw ``websockets`` clients), its
flow control, the ws:// client's errors, reconnection, and Redis-backed scale-out."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

import echo_lab as el
from echo_lab.backends.websocket import AuthenticationError, WebSocketBackend
from echo_lab.broker import BrokerHandle, serve
from tests.fixtures.servers import free_port
from tests.helpers import wait_until


@pytest.fixture
def broker_factory(memory_url: str) -> Iterator[Callable[..., BrokerHandle]]:
    """``broker_factory(**limits)`` starts a memory-backed broker; all stopped at the end."""
    started: list[BrokerHandle] = []

    def start(**options: Any) -> BrokerHandle:
        options.setdefault("backend", memory_url)
        handle = serve(**options)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


def raw(url: str, **options: Any) -> ClientConnection:
    """A raw websockets client (compression off)."""
    return ws_connect(url, compression=None, open_timeout=5, **options)


def request(ws: ClientConnection, frame: dict[str, Any] | str) -> dict[str, Any]:
    """Send a frame and return the next frame that is not a delivery."""
    ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    while True:
        reply = json.loads(ws.recv(timeout=5))
        if reply["op"] != "deliver":
            return reply


def alive(ws: ClientConnection) -> bool:
    return request(ws, {"op": "ping", "rid": "alive"}) == {
        "op": "ok",
        "rid": "alive",
        "result": "pong",
    }


def close_of(ws: ClientConnection) -> tuple[int | None, str]:
    """Wait for the broker to close ``ws``; return its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(1000):
            ws.recv(timeout=5)
    rcvd = info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, "")


# -- binding, auth ---------------------------------------------------------------------------
def test_binds_localhost_by_default(broker_factory) -> None:
    handle = broker_factory()
    assert handle.url.startswith("ws://127.0.0.1:")
    assert handle.broker.host == "127.0.0.1"


def test_token_is_required_and_refusals_are_clear(broker_factory) -> None:
    handle = broker_factory(token="s3cret")
    with raw(handle.url) as ws:  # no token: the first frame is not a hello
        ws.send(json.dumps({"op": "topics", "rid": 1}))
        code, reason = close_of(ws)
        assert code == 4001 and "unauthorized" in reason and "token" in reason
    with raw(handle.url) as ws:
        ws.send(json.dumps({"op": "hello", "rid": 1, "token": "wrong"}))
        assert close_of(ws) == (4001, "unauthorized: invalid token")
    with raw(handle.url + "/?token=wrong") as ws:
        assert close_of(ws) == (4001, "unauthorized: invalid token")
    with raw(handle.url) as ws:
        assert request(ws, {"op": "hello", "rid": 1, "token": "s3cret"})["op"] == "ok"
        assert request(ws, {"op": "topics", "rid": 2}) == {"op": "ok", "rid": 2, "result": []}
    with raw(handle.url + "/?token=s3cret") as ws:
        assert alive(ws)
    assert handle.stats["disconnects"]["unauthorized"] == 3

    with pytest.raises(AuthenticationError, match=r"refused the token.*invalid token"):
        el.connect(handle.url, token="nope")
    with pytest.raises(PermissionError, match="needs a token"):
        el.connect(handle.url)
    with el.connect(handle.url, token="s3cret") as stream:
        stream.publish("t", {"ok": 1})
        assert stream.take("t", 1, timeout=5, start="0")[0].data == {"ok": 1}
    with el.connect(handle.url + "?token=s3cret") as stream:
        assert "s3cret" not in repr(stream) and stream.topics() == ["t"]


# -- bad frames --------------------------------------------------------------------------------
def test_bad_frames_get_error_frames_and_the_connection_survives(broker_factory) -> None:
    handle = broker_factory()
    with raw(handle.url) as ws:
        reply = request(ws, "{not json")
        assert reply["op"] == "error" and reply["code"] == "bad_json"
        assert request(ws, "[1, 2]")["code"] == "bad_frame"
        reply = request(ws, {"op": "explode", "rid": 7})
        assert (reply["code"], reply["rid"]) == ("unknown_op", 7) and "explode" in reply["message"]
        reply = request(ws, {"op": "publish", "rid": 8, "topic": 5, "data": {}})
        assert reply["code"] == "bad_field" and "'topic'" in reply["message"]
        reply = request(ws, {"op": "publish", "rid": 9, "topic": "t", "fields": {"a": 1}})
        assert reply["code"] == "bad_field" and "'a'" in reply["message"]
        reply = request(ws, {"op": "subscribe", "rid": 10, "sub": 1, "topic": "t", "start": "x"})
        assert reply["code"] == "bad_field" and "start position" in reply["message"]
        reply = request(ws, {"op": "credit", "rid": 11, "sub": 99, "n": 5})
        assert reply["code"] == "unknown_sub"
        ws.send(b"\x00\x01binary")
        assert json.loads(ws.recv(timeout=5))["code"] == "bad_frame"
        assert alive(ws)
        reply = request(ws, {"op": "publish", "rid": 12, "topic": "t", "data": {"x": 1}})
        assert reply["op"] == "ok" and len(reply["result"]) == 1
    assert handle.stats["bad_frames"] == 8


def test_a_client_that_keeps_sending_garbage_is_closed(broker_factory) -> None:
    handle = broker_factory(max_bad_frames=10)
    with raw(handle.url) as ws:
        for i in range(9):
            assert request(ws, f"garbage {i}")["code"] == "bad_json"
        ws.send("garbage 10")
        code, reason = close_of(ws)
        assert code == 1008 and "too many bad frames" in reason
    assert handle.stats["disconnects"]["bad_frames"] == 1
    with raw(handle.url) as ws:  # others are served as before
        assert alive(ws)


def test_frames_over_the_maximum_size_are_refused(broker_factory) -> None:
    handle = broker_factory(max_frame=4096)
    with raw(handle.url) as ws:
        big = {"op": "publish", "rid": 1, "topic": "t", "data": {"blob": "x" * 5000}}
        ws.send(json.dumps(big))
        code, _ = close_of(ws)
        assert code == 1009  # message too big
    with raw(handle.url) as ws:
        assert alive(ws)


def test_subscriptions_per_connection_are_limited(broker_factory) -> None:
    handle = broker_factory(max_subscriptions=3)
    with raw(handle.url) as ws:
        for sub in range(3):
            reply = request(ws, {"op": "subscribe", "rid": sub, "sub": sub, "topic": f"t{sub}"})
            assert reply["op"] == "ok"
        reply = request(ws, {"op": "subscribe", "rid": 3, "sub": 3, "topic": "t3"})
        assert reply["code"] == "limit" and "3 subscriptions" in reply["message"]
        reply = request(ws, {"op": "subscribe", "rid": 4, "sub": 0, "topic": "t0"})
        assert reply["code"] == "duplicate_sub"
        assert request(ws, {"op": "unsubscribe", "rid": 5, "sub": 0})["result"] is True
        assert request(ws, {"op": "subscribe", "rid": 6, "sub": 3, "topic": "t3"})["op"] == "ok"


# -- flow control and slow clients ---------------------------------------------------------------
def test_credit_bounds_what_the_broker_pushes(broker_factory) -> None:
    handle = broker_factory()
    with raw(handle.url) as ws, el.connect(handle.url) as stream:
        request(ws, {"op": "subscribe", "rid": 1, "sub": "s", "topic": "t", "credit": 10})
        stream.publish_many("t", [{"n": i} for i in range(50)])
        got: list[int] = []
        while len(got) < 10:
            got += [
                json.loads(f["data"])["n"] for _, f in json.loads(ws.recv(timeout=5))["entries"]
            ]
        assert got == list(range(10))
        assert alive(ws)  # nothing more was pushed: the next frame is the ping's reply
        ws.send(json.dumps({"op": "credit", "sub": "s", "n": 40}))
        while len(got) < 50:
            got += [
                json.loads(f["data"])["n"] for _, f in json.loads(ws.recv(timeout=5))["entries"]
            ]
        assert got == list(range(50))


def test_entries_appended_beside_the_broker_reach_its_subscribers_in_log_order(
    broker_factory, memory_url: str
) -> None:
    """A memory-backed broker's subscriptions are woken by its own publishes and by appends
    from other threads of its process (the store is shared), interleaved, within credit."""
    handle = broker_factory()
    n = 1500
    with (
        el.connect(memory_url) as local,  # the broker's store, appended to from this thread
        el.connect(handle.url) as remote,  # through the broker
        el.connect(handle.url, credit=16) as reader,
    ):
        got: list[str] = []
        sub = reader.on("t", lambda e: got.append(e.id))

        def through_the_broker() -> None:
            for i in range(0, n, 3):
                remote.publish_many("t", [{"by": "ws", "i": k} for k in range(i, i + 3)])

        thread = threading.Thread(target=through_the_broker)
        thread.start()
        for i in range(n):
            local.publish("t", {"by": "local", "i": i})
        thread.join()
        assert wait_until(lambda: len(got) >= 2 * n, timeout=30)
        assert got == [e.id for e in local.history("t")]  # each once, in the log's order
        sub.stop()


def test_a_client_that_stops_reading_is_disconnected_and_others_are_served(
    broker_factory,
) -> None:
    handle = broker_factory(max_send_queue=256 << 10)
    healthy: list[int] = []
    # max_queue=1: this client's library stops reading the socket once a frame is waiting
    with (
        raw(handle.url, max_queue=1) as stalled,
        el.connect(handle.url) as stream,
        el.connect(handle.url) as producer,
    ):
        request(stalled, {"op": "subscribe", "rid": 1, "sub": "s", "topic": "t", "credit": 10**5})
        sub = stream.on("t", lambda e: healthy.append(e.data["n"]))
        blob = "x" * 8000
        n = 0
        while handle.stats["disconnects"]["slow_consumer"] == 0 and n < 20_000:
            producer.publish_many("t", [{"n": n + i, "blob": blob} for i in range(100)])
            n += 100
        assert handle.stats["disconnects"]["slow_consumer"] == 1
        assert wait_until(lambda: len(healthy) == n, timeout=30)
        assert healthy == list(range(n))
        sub.stop()
        with pytest.raises(ConnectionClosed):  # what was buffered, then the cut
            for _ in range(100_000):
                stalled.recv(timeout=5)


# -- the ws:// client -----------------------------------------------------------------------------
def test_unreachable_broker_is_a_quick_connection_error_naming_host_and_port() -> None:
    port = free_port()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        el.connect(f"ws://127.0.0.1:{port}")  # refused at once: no retries on first connect


def test_bad_ws_urls_and_options_are_value_errors() -> None:
    with pytest.raises(ValueError, match="bogus"):
        el.connect("ws://127.0.0.1:1", bogus=1)
    with pytest.raises(ValueError, match="malformed"):
        el.connect("ws://")
    with pytest.raises(ValueError, match="malformed"):
        el.connect("ws://host:notaport")
    with pytest.raises(ValueError, match="what"):
        el.connect("ws://127.0.0.1:1/?what=1")
    backend = WebSocketBackend.from_url("ws://127.0.0.1:9/path?token=abc")
    assert backend.url == "ws://127.0.0.1:9/path" and backend._token == "abc"


def test_stream_survives_a_broker_restart(memory_url: str) -> None:
    port = free_port()
    handle = serve(port=port, backend=memory_url)
    got: list[int] = []
    try:
        with el.connect(handle.url) as stream:
            sub = stream.on("t", lambda e: got.append(e.data["n"]))
            stream.publish_many("t", [{"n": i} for i in range(10)])
            assert wait_until(lambda: len(got) == 10)
            handle.stop()
            handle = serve(port=port, backend=memory_url)  # same store: the log survived
            stream.publish_many("t", [{"n": i} for i in range(10, 20)])  # reconnects
            assert wait_until(lambda: len(got) == 20, timeout=15)
            assert got == list(range(20))  # resubscribed after the last id seen: no repeats
            assert stream.backend.reconnects >= 1
            sub.stop()
    finally:
        handle.stop()


# -- Redis-backed scale-out ----------------------------------------------------------------------
def test_two_brokers_on_one_redis_serve_one_set_of_topics(redis_url: str) -> None:
    a, b = serve(redis=redis_url), serve(redis=redis_url)
    try:
        with el.connect(a.url) as pub, el.connect(b.url) as sub1, el.connect(a.url) as sub2:
            fan: list[int] = []
            work: dict[str, list[int]] = {"a": [], "b": []}
            s = sub1.on("t", lambda e: fan.append(e.data["n"]))
            g1 = sub1.on("t", lambda e: work["b"].append(e.data["n"]), group="g")
            g2 = sub2.on("t", lambda e: work["a"].append(e.data["n"]), group="g")
            for i in range(100):
                pub.publish("t", {"n": i})
            assert wait_until(lambda: len(fan) == 100, timeout=15)
            assert fan == list(range(100))  # published on broker A, received via broker B
            assert wait_until(lambda: len(work["a"]) + len(work["b"]) == 100, timeout=15)
            assert sorted(work["a"] + work["b"]) == list(range(100))
            assert b.stats["published"] == 0 and a.stats["published"] == 100
            assert sub1.info("t")["length"] == 100 and "t" in pub.topics()
            for x in (s, g1, g2):
                x.stop()
    finally:
        a.stop()
        b.stop()


def test_redis_backed_broker_restart_loses_nothing(redis_url: str) -> None:
    port = free_port()
    handle = serve(port=port, redis=redis_url)
    fan: list[int] = []
    work: list[int] = []
    try:
        with el.connect(handle.url) as stream, el.connect(redis_url) as direct:
            s = stream.on("t", lambda e: fan.append(e.data["n"]))
            g = stream.on("t", lambda e: work.append(e.data["n"]), group="g")
            stream.publish_many("t", [{"n": i} for i in range(50)])
            assert wait_until(lambda: len(fan) == 50 and len(work) >= 50, timeout=15)
            handle.stop()
            direct.publish_many("t", [{"n": i} for i in range(50, 100)])  # while it is down
            handle = serve(port=port, redis=redis_url)
            assert wait_until(lambda: len(fan) == 100, timeout=20)
            assert fan == list(range(100))
            assert wait_until(lambda: set(work) == set(range(100)), timeout=20)  # at least once
            assert wait_until(lambda: direct.pending("t", "g") == [], timeout=10)
            s.stop()
            g.stop()
    finally:
        handle.stop()


def _port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_stop_releases_the_port_and_threads(broker_factory) -> None:
    before = threading.active_count()
    handle = broker_factory()
    port = handle.broker.port
    with raw(handle.url) as ws:
        assert alive(ws)
    handle.stop()
    assert _port_is_closed(port)
    assert wait_until(lambda: threading.active_count() <= before)


def test_big_batches_are_split_and_oversized_messages_refused(broker_factory) -> None:
    handle = broker_factory(max_frame=64 << 10)
    with el.connect(handle.url) as stream:
        blob = "x" * 20_000
        ids = stream.publish_many("big", [{"n": i, "blob": blob} for i in range(20)])
        assert len(ids) == 20  # 400 kB in frames under 64 kB each
        got = stream.take("big", 20, timeout=10, start="0")
        assert [e.data["n"] for e in got] == list(range(20))
        with pytest.raises(ValueError, match="larger than the broker's max_frame"):
            stream.publish("big", {"blob": "y" * 100_000})
        assert stream.publish("big", {"still": "connected"})
        many = stream.publish_many("many", [{"n": i} for i in range(12_001)])
        history = stream.history("many")  # fetched in pages
        assert [e.id for e in history] == many
        assert len(stream.history("many", count=7000)) == 7000
        newest = stream.runtime.run(stream.backend.range("many", reverse=True))  # pages too
        assert [i for i, _ in newest] == many[::-1]
        newest = stream.runtime.run(stream.backend.range("many", count=7000, reverse=True))
        assert [i for i, _ in newest] == many[:-7001:-1]


def test_a_full_memory_log_waits_for_its_reader_and_a_gone_reader_releases_it(
    broker_factory,
) -> None:
    handle = broker_factory()
    with raw(handle.url) as publisher:
        with raw(handle.url) as reader:  # a live reader that reads nothing (no credit)
            request(reader, {"op": "subscribe", "rid": 1, "sub": 1, "topic": "bp", "credit": 0})
            entries = [{"n": str(i)} for i in range(3)]
            frame = {"op": "publish", "rid": 2, "topic": "bp", "entries": entries, "maxlen": 2}
            publisher.send(json.dumps(frame))
            with pytest.raises(TimeoutError):  # back-pressure: nothing unread is trimmed
                publisher.recv(timeout=0.5)
        reply = json.loads(publisher.recv(timeout=10))  # the reader left: room again
        assert reply["rid"] == 2 and len(reply["result"]) == 3
        assert alive(publisher)
