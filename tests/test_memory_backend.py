"""Memory-backend specifics: back-pressure bounds memory and loses nothing; shared names."""

from __future__ import annotations

import threading
import time

import echo_lab as el
from tests.helpers import wait_until


def test_slow_subscriber_gets_back_pressure_not_loss_or_growth(memory_url):
    s = el.connect(memory_url, maxlen=50)
    got: list[int] = []
    lengths: list[int] = []

    def slow(env: el.Envelope) -> None:
        time.sleep(0.001)
        got.append(env.data["n"])
        lengths.append(s.backend._store.logs["t"].__len__())

    sub = s.on("t", slow)
    done = threading.Event()

    def produce() -> None:
        s.publish_many("t", [{"n": i} for i in range(300)])
        done.set()

    threading.Thread(target=produce).start()
    assert wait_until(lambda: len(got) == 300, timeout=30)
    assert done.wait(5)
    assert got == list(range(300))  # nothing lost
    assert max(lengths) <= 50  # memory bounded by maxlen
    sub.stop()
    s.close()


def test_without_live_readers_the_oldest_entries_are_trimmed(memory_url):
    s = el.connect(memory_url, maxlen=5)
    ids = s.publish_many("t", [{"n": i} for i in range(12)])
    assert s.info("t")["length"] == 5 and s.info("t")["first_id"] == ids[7]
    s.close()


def test_same_name_shares_logs_other_names_do_not(memory_url):
    a, b, c = el.connect(memory_url), el.connect(memory_url), el.connect(memory_url + "x")
    a.publish("t", {"n": 1})
    assert len(b.take("t", 1, timeout=1, start="0")) == 1
    assert c.take("t", 1, timeout=0.2, start="0") == []
    for s in (a, b, c):
        s.close()


def test_connect_defaults_to_env_url_then_memory(monkeypatch, memory_url):
    monkeypatch.setenv("ECHO_LAB_URL", memory_url)
    s = el.connect()
    assert s.backend.url == memory_url
    monkeypatch.delenv("ECHO_LAB_URL")
    d = el.connect()
    assert d.backend.url == "memory://"
    s.close()
    d.close()


def test_a_retained_log_costs_its_bytes_and_nothing_to_the_garbage_collector(memory_url):
    """A log of small messages keeps small entries (orjson's 4 KiB output buffers are not
    retained), and adds no container per entry for every full collection to walk."""
    import gc
    import tracemalloc

    s = el.connect(memory_url)
    rows = [{"sensor": "s1", "temp": 21.5, "n": i} for i in range(20_000)]
    gc.collect()
    tracked = len(gc.get_objects())
    tracemalloc.start()
    try:
        s.publish_many("t", rows)
        for _ in range(100):
            s.publish("t", {"sensor": "s1", "temp": 21.5})
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gc.collect()
    assert len(gc.get_objects()) - tracked < 1_000
    assert retained / 20_100 < 400  # bytes per entry: id, fields dict, JSON (was > 4 KiB)
    assert s.info("t")["length"] == 20_100
    s.close()
