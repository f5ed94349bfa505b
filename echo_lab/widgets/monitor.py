"""``stream.monitor()``: a live per-topic traffic table.

The monitor never sits in the message path: it reads counters. On every redraw tick it polls
the backend's ``info`` of every watched topic (one round trip: :meth:`Backend.infos`), whose
``added`` counter (every entry ever appended, trimmed ones too) gives the new messages; rates
come from those samples. Entries are only read a few at a time: the newest ones of the topic
shown (when its last id changes), and a small sample of a busy topic now and then to
estimate its bytes. Where the store keeps no such counter (Redis < 7: ``added`` is ``None``)
the topic falls back to a raw fan-out cursor that counts every entry it reads (nothing is
decoded there either). A :class:`~echo_lab.widgets._refresh.Ticker` drives all of this on
the runtime loop at most ~10 times a second, and decodes only the handful of entries shown.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import orjson

from ..codec import decode
from ..consumer import Subscription
from ..errors import DecodeError
from ..ids import MAX_SEQ, Position, parse_id, parse_start
from ..message import Envelope
from ._refresh import (
    Ticker,
    esc,
    fmt_age,
    fmt_bytes,
    fmt_count,
    fmt_id_time,
    fmt_rate,
    sparkline_svg,
)
from ._style import style_widget

if TYPE_CHECKING:
    from ..backends.base import Cursor, RawEntry
    from ..stream import Stream

__all__ = ["Monitor", "TopicStats"]

logger = logging.getLogger("echo_lab")

_READ_BATCH = 512
_SPARK_POINTS = 60
#: Newest entries fetched at a time: shown (the chosen topic) and used to size new messages.
_SAMPLE = 16
#: Seconds between size samples of a busy topic that is not shown.
_SAMPLE_EVERY = 1.0


@dataclass
class TopicStats:
    """Counters of one topic, updated by the monitor's poll (read them any time)."""

    topic: str
    messages: int = 0  #: messages appended since the monitor started (see ``start``)
    #: bytes of their stored field values: estimated, as their count times the mean size of
    #: the topic's newest entries (sampled at most every second); exact per entry read on the
    #: cursor fallback, for batches of up to 64 entries
    bytes: int = 0
    last_seen: float | None = None  #: wall-clock time (epoch s) new messages were last seen
    last_id: str | None = None  #: id of the newest one
    newest: list[RawEntry] = field(default_factory=list)  #: the newest raw entries, newest first
    #: the topic's ``added`` counter at the last poll; ``None``: counted by a cursor instead
    added: int | None = None
    samples: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=1024)
    )
    spark: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_SPARK_POINTS)
    )
    newest_of: str | None = None  #: ``last_id`` when ``newest`` was fetched
    sampled_at: float = -math.inf  #: monotonic time ``newest`` was fetched
    mean_size: float | None = None  #: mean bytes of the entries in ``newest``
    fresh: int = 0  #: new messages seen by a poll, not yet added to ``messages``
    fresh_at: float | None = None  #: when they were seen (epoch s)
    unsized: int = 0  #: messages not yet added to ``bytes`` (no size sample yet)

    def rate(self, window: float, now: float) -> float:
        """Messages per second over the last ``window`` seconds (from the samples)."""
        samples = list(self.samples)  # a snapshot: the timer appends from another thread
        if not samples:
            return 0.0
        t_old, m_old = samples[0]
        for t, m in samples:
            if now - t <= window:
                t_old, m_old = t, m
                break
        span = max(now - t_old, 1.0)  # a topic seen for a moment: no inflated rate
        return (self.messages - m_old) / span


_EXACT = 64  #: read batches up to this size are sized exactly; larger ones from a sample


def _entry_size(entry: RawEntry) -> int:
    return sum([len(v) for v in entry[1].values()])


def _size(batch: Sequence[RawEntry]) -> int:
    """Bytes of the field values of a read batch: exact up to 64 entries, else estimated from
    64 evenly spaced entries (keeps the cursor fallback's cost flat under heavy load)."""
    n = len(batch)
    if n <= _EXACT:
        return sum([_entry_size(entry) for entry in batch])
    step = n / _EXACT
    sample = [batch[int(i * step)] for i in range(_EXACT)]
    return round(sum([_entry_size(entry) for entry in sample]) * n / _EXACT)


def _after(key: tuple[int, int]) -> str:
    """The smallest id greater than ``key`` (an inclusive range start)."""
    ms, seq = key
    return f"{ms}-{seq + 1}" if seq < MAX_SEQ else f"{ms + 1}-0"


def _id_time(id_: str | None, now: float) -> float | None:
    """The wall-clock time of an id (at most ``now``: the store's clock may run ahead)."""
    if id_ is None:
        return None
    return min(parse_id(id_)[0] / 1000, now)


class Monitor(widgets.VBox):
    """A live per-topic traffic view of a stream (``stream.monitor()``).

    Each row shows a topic's messages, rate (msg/s over ``rate_window`` seconds), bytes,
    last seen and a sparkline of the rate; pick a topic to see its newest messages. New
    topics appear by themselves (polled every ``discover`` seconds). Pause freezes the view
    (counting goes on); the form publishes a JSON body to a topic.

    The counts come from the backend's per-topic ``added`` counter, polled every
    ``interval`` seconds, so they include messages trimmed by retention before anyone read
    them; bytes are estimated from the mean size of each topic's newest entries. On a store
    without that counter (Redis < 7) a topic is counted by reading its entries instead.

    Args:
        stream: the stream to watch.
        start: where existing topics are counted from: ``"$"`` (new messages, default),
            ``"0"`` (everything retained), or an id or a ``datetime`` (what is retained after
            it). Topics created later are counted from their first message.
        interval: seconds between polls and redraws (at least 0.1: at most 10 a second).
        rate_window: seconds of the sliding window of the rate.
        discover: seconds between looks for new topics.
        newest: how many of the chosen topic's newest messages are shown.
        topics: only watch topics matching this glob (e.g. ``"sensors*"``); default all.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        start: Position = "$",
        interval: float = 0.25,
        rate_window: float = 5.0,
        discover: float = 1.0,
        newest: int = 6,
        topics: str | None = None,
    ) -> None:
        parse_start(start)
        self.stream = stream
        self.start = start
        self.rate_window = float(rate_window)
        self.discover = float(discover)
        self.keep = int(newest)
        self.pattern = topics
        self.stats: dict[str, TopicStats] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._started = time.monotonic()
        self._spark_at = 0.0
        self._drawing: int | None = None  # the thread drawing now
        self._auto_topic = True
        self.title = widgets.HTML(
            f'<span class="echo-title">echo_lab monitor</span> '
            f'<span class="echo-sub">{esc(stream.backend.url)}</span>'
        )
        self.total = widgets.HTML()
        self.total.add_class("echo-monitor-total")
        self.filter = widgets.Text(
            placeholder="filter topics", layout=widgets.Layout(width="180px")
        )
        self.filter.add_class("echo-monitor-filter")
        self.pause = widgets.ToggleButton(
            value=False, description="Pause", icon="pause", layout=widgets.Layout(width="96px")
        )
        self.pause.add_class("echo-monitor-pause")
        self.table = widgets.HTML()
        self.table.add_class("echo-monitor-table")
        self.topic = widgets.Dropdown(
            options=[], description="newest of", layout=widgets.Layout(width="300px")
        )
        self.topic.add_class("echo-monitor-topic")
        self.messages = widgets.HTML()
        self.messages.add_class("echo-monitor-newest")
        self.consumers = widgets.HTML()
        self.consumers.add_class("echo-monitor-consumers")
        self.pub_topic = widgets.Text(placeholder="topic", layout=widgets.Layout(width="160px"))
        self.pub_body = widgets.Text(
            placeholder='{"temp": 21.5}', layout=widgets.Layout(flex="1 1 auto", width="auto")
        )
        self.pub_button = widgets.Button(
            description="Publish", icon="paper-plane", layout=widgets.Layout(width="100px")
        )
        self.pub_status = widgets.HTML()
        for w, cls in (
            (self.pub_topic, "echo-monitor-pub-topic"),
            (self.pub_body, "echo-monitor-pub-body"),
            (self.pub_button, "echo-monitor-pub-button"),
            (self.pub_status, "echo-monitor-pub-status"),
        ):
            w.add_class(cls)
        self.pub_button.on_click(lambda _: self.publish_form())
        self.pause.observe(self._on_pause, "value")
        self.filter.observe(lambda _: self._redraw(), "value")
        self.topic.observe(self._on_topic, "value")

        header = widgets.HBox(
            [self.title, widgets.HBox([self.total], layout=widgets.Layout(flex="1 1 auto"))],
            layout=widgets.Layout(align_items="center", justify_content="space-between"),
        )
        controls = widgets.HBox([self.filter, self.pause])
        pub = widgets.HBox(
            [self.pub_topic, self.pub_body, self.pub_button],
            layout=widgets.Layout(width="100%"),
        )
        super().__init__(
            [
                style_widget(),
                widgets.HBox(
                    [header, controls],
                    layout=widgets.Layout(justify_content="space-between", align_items="center"),
                ),
                self.table,
                self.consumers,
                self.topic,
                self.messages,
                pub,
                self.pub_status,
            ],
            layout=widgets.Layout(padding="4px 6px", width="100%"),
        )
        self.add_class("echo-w")
        self.add_class("echo-monitor")

        stream.runtime.run(self._astart())
        self.ticker = Ticker(stream.runtime, self._tick, interval)
        self.ticker.start()

    # -- background: polling, fallback readers and discovery (runtime loop) --------------
    async def _astart(self) -> None:
        names = [topic for topic in await self.stream.backend.topics() if self._wanted(topic)]
        await self._watch(names, self.start)
        self._tasks["<discover>"] = asyncio.create_task(self._discover_loop())

    def _wanted(self, topic: str) -> bool:
        return self.pattern is None or fnmatch.fnmatchcase(topic, self.pattern)

    async def _watch(self, names: list[str], start: Position | None) -> None:
        """Start counting ``names`` from ``start`` (``None``: a topic new since the monitor
        started, counted from its first message, trimmed ones included)."""
        if not names:
            return
        backend = self.stream.backend
        infos = await backend.infos(names)
        after = None if start is None else parse_start(start)
        now = time.time()
        for name, info in zip(names, infos, strict=True):
            if name in self.stats:
                continue
            st = TopicStats(name, last_id=info["last_id"])
            st.samples.append((time.monotonic(), 0))  # the rate's baseline
            added = info.get("added")
            if added is None:  # no counter in this store: count by reading
                self.stats[name] = st
                await self._read_from(st, "0" if start is None else start)
                continue
            if start is None:
                count = added
            elif after is None:  # "$"
                count = 0
            elif after == (0, 0):  # "0": what is retained
                count = info["length"]
            else:  # what is retained after an id or a time: counted once, here
                count = len(await backend.range(name, _after(after), "+"))
            st.added = added
            if count:
                st.fresh, st.fresh_at = count, _id_time(info["last_id"], now)
                if start is not None:  # a backlog, not traffic: no burst in the rate
                    st.samples[0] = (st.samples[0][0], count)
                await self._fetch_newest(st)  # to size them
            self._apply(st)
            self.stats[name] = st

    async def _read_from(self, st: TopicStats, start: Position) -> None:
        """Count ``st``'s topic by reading it with a raw cursor (the store has no counter)."""
        cursor = await self.stream.backend.cursor(st.topic, start)  # "$" resolved now
        if st.topic in self._tasks:  # a concurrent poll started one meanwhile
            await cursor.close()
            return
        st.added = None
        self._tasks[st.topic] = asyncio.create_task(self._read(cursor, st))

    async def _read(self, cursor: Cursor, st: TopicStats) -> None:
        delay = 0.1
        try:
            while not self._stopping:
                try:
                    batch = await cursor.read(_READ_BATCH, None)
                    delay = 0.1
                except Exception as exc:  # connection lost, topic deleted …: retry, never die
                    if self.stream._closed:
                        return
                    logger.debug("monitor: reading %s failed: %s", st.topic, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if not batch:
                    if self.stream._closed:
                        return
                    continue
                st.messages += len(batch)
                st.bytes += _size(batch)
                st.last_seen = time.time()
                st.last_id = batch[-1][0]
        finally:
            await cursor.close()

    async def _poll(self) -> None:
        """Read every counted topic's ``info`` (one round trip) and bump its counters; fetch
        the newest entries of the topic shown when it changed, and size samples."""
        names = [name for name, st in self.stats.items() if st.added is not None]
        if names:
            infos = await self.stream.backend.infos(names)
            now = time.time()
            for name, info in zip(names, infos, strict=True):
                st = self.stats.get(name)
                if st is None or st.added is None:  # dropped, or a reader counts it now
                    continue
                added = info.get("added")
                if added is None:  # the store lost its counter (an older Redis took over)
                    await self._read_from(st, st.last_id or "0")
                    continue
                # fewer than before: the topic was deleted and created again meanwhile
                new = added - st.added if added >= st.added else added
                st.added = added
                if info["last_id"] is not None:
                    st.last_id = info["last_id"]
                if new > 0:
                    st.fresh += new
                    st.fresh_at = now
        chosen = self.topic.value
        mono = time.monotonic()
        for name, st in list(self.stats.items()):
            if st.newest_of != st.last_id and (
                name == chosen
                or ((st.fresh or st.unsized) and mono - st.sampled_at >= _SAMPLE_EVERY)
            ):
                await self._fetch_newest(st)
        for st in list(self.stats.values()):
            self._apply(st)

    @staticmethod
    def _apply(st: TopicStats) -> None:
        """Make a poll's new messages visible, with their bytes (no await: both at once)."""
        if st.fresh:
            st.messages += st.fresh
            st.unsized += st.fresh
            st.last_seen = st.fresh_at
            st.fresh = 0
        if st.unsized and st.mean_size is not None:
            st.bytes += round(st.unsized * st.mean_size)
            st.unsized = 0

    async def _fetch_newest(self, st: TopicStats) -> None:
        """Fetch the topic's newest few entries (shown, and a size sample)."""
        last_id = st.last_id
        try:
            entries = await self.stream.backend.range(
                st.topic, count=max(self.keep, _SAMPLE), reverse=True
            )
        except Exception as exc:
            logger.debug("monitor: reading the newest of %s failed: %s", st.topic, exc)
            return
        st.newest, st.newest_of, st.sampled_at = entries, last_id, time.monotonic()
        if entries:
            st.mean_size = sum([_entry_size(e) for e in entries]) / len(entries)

    async def _discover_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.discover)
            if self.stream._closed:
                return
            try:
                names = await self.stream.backend.topics()
                new = [t for t in names if t not in self.stats and self._wanted(t)]
                await self._watch(new, None)  # new since we started: count it all
            except Exception as exc:
                logger.debug("monitor: listing topics failed: %s", exc)
                continue
            gone = set(self.stats) - set(names)
            for topic in gone:  # deleted: drop its row
                task = self._tasks.pop(topic, None)
                if task is not None:
                    task.cancel()
                self.stats.pop(topic, None)

    # -- state (any thread) ---------------------------------------------------------------
    def rows(self, *, filtered: bool = True) -> list[dict[str, Any]]:
        """One dict per topic: ``topic, messages, rate, bytes, last_seen, last_id`` (sorted
        by topic; only those matching the filter box unless ``filtered=False``)."""
        now_m, now_w = time.monotonic(), time.time()
        out = []
        for name in sorted(self.stats):
            if filtered and not self._matches(name):
                continue
            st = self.stats.get(name)
            if st is None:  # dropped meanwhile (the topic was deleted)
                continue
            out.append(
                {
                    "topic": name,
                    "messages": st.messages,
                    "rate": st.rate(self.rate_window, now_m),
                    "bytes": st.bytes,
                    "last_seen": None if st.last_seen is None else now_w - st.last_seen,
                    "last_id": st.last_id,
                    "spark": list(st.spark),
                }
            )
        return out

    def _matches(self, topic: str) -> bool:
        text = self.filter.value.strip()
        if not text:
            return True
        if any(c in text for c in "*?["):
            return fnmatch.fnmatchcase(topic, text)
        return text.lower() in topic.lower()

    def newest(self, topic: str | None = None) -> list[Envelope]:
        """The newest messages of ``topic`` (default: the chosen one), newest first."""
        name = topic if topic is not None else self.topic.value
        st = self.stats.get(name) if name else None
        if st is None:
            return []
        runtime = self.stream.runtime
        stale = st.newest_of != st.last_id
        if stale and not (runtime.in_loop_thread() or self._stopping or self.stream._closed):
            runtime.run(self._fetch_newest(st))  # asked from a cell: fetch them now
        out = []
        for id_, fields in st.newest[: self.keep]:
            try:
                out.append(decode(name, id_, fields))
            except DecodeError:
                continue
        return out

    @property
    def paused(self) -> bool:
        """True while the view is frozen."""
        return self.pause.value

    # -- drawing ----------------------------------------------------------------------------
    def _on_topic(self, _: Any) -> None:
        if self._drawing != threading.get_ident():  # the user picked a topic: keep it
            self._auto_topic = False
            self._redraw()

    def _on_pause(self, change: dict[str, Any]) -> None:
        self.pause.description = "Resume" if change["new"] else "Pause"
        self.pause.icon = "play" if change["new"] else "pause"
        if not change["new"]:
            self._redraw()

    async def _tick(self) -> None:
        if self.stream._closed:
            self._stopping = True
            self.ticker.stop()
            return
        try:
            await self._poll()
        except Exception as exc:  # connection lost …: the next tick polls again
            logger.debug("monitor: polling failed: %s", exc)
        now = time.monotonic()
        for st in list(self.stats.values()):
            st.samples.append((now, st.messages))
            while len(st.samples) > 2 and now - st.samples[1][0] > self.rate_window:
                st.samples.popleft()
        if now - self._spark_at >= 1.0:
            self._spark_at = now
            for st in list(self.stats.values()):
                st.spark.append(st.rate(min(self.rate_window, 1.0), now))
        if not self.pause.value:
            self._redraw()

    def _redraw(self) -> None:
        if self._drawing is not None:
            return
        self._drawing = threading.get_ident()
        try:
            self._draw()
        finally:
            self._drawing = None

    def _draw(self) -> None:
        rows = self.rows()
        names = sorted(self.stats)
        if list(self.topic.options) != names:
            current = self.topic.value
            self.topic.options = names
            if current in names:
                self.topic.value = current
        if self._auto_topic and names:  # until the user picks one: the busiest topic
            busiest = max(names, key=lambda n: getattr(self.stats.get(n), "messages", -1))
            if self.topic.value != busiest:
                self.topic.value = busiest
        total = sum(st.messages for st in self.stats.values())
        rate = sum(r["rate"] for r in self.rows(filtered=False))
        self.total.value = (
            f'<span class="echo-kpi"><b class="echo-monitor-total-count">{fmt_count(total)}</b>'
            f' messages · <b class="echo-monitor-total-rate">{fmt_rate(rate)}</b> msg/s · '
            f"{len(names)} topics</span>"
        )
        self.table.value = self._table_html(rows)
        self.consumers.value = self._consumers_html(self.consumer_rows())
        self.messages.value = self._newest_html()

    def _table_html(self, rows: list[dict[str, Any]]) -> str:
        if not rows:
            text = "no topics yet" if not self.stats else "no topic matches the filter"
            return f'<div class="echo-empty">{text}</div>'
        chosen = self.topic.value
        head = (
            "<tr><th>topic</th><th class='num'>messages</th><th class='num'>msg/s</th>"
            "<th class='num'>bytes</th><th>last seen</th><th>rate, last minute</th></tr>"
        )
        body = []
        for r in rows:
            classes = []
            if r["topic"] == chosen:
                classes.append("echo-selected")
            if r["topic"].endswith(".dead"):
                classes.append("echo-dead")
            body.append(
                f'<tr class="{" ".join(classes)}" data-topic="{esc(r["topic"])}">'
                f'<td class="echo-topic">{esc(r["topic"])}</td>'
                f'<td class="num echo-count">{fmt_count(r["messages"])}</td>'
                f'<td class="num echo-rate">{fmt_rate(r["rate"])}</td>'
                f'<td class="num echo-bytes">{fmt_bytes(r["bytes"])}</td>'
                f'<td class="echo-age">{fmt_age(r["last_seen"])}</td>'
                f"<td>{sparkline_svg(r['spark'])}</td></tr>"
            )
        return f'<table class="echo-table">{head}{"".join(body)}</table>'

    def consumer_rows(self) -> list[dict[str, Any]]:
        """One dict per running consumer of this stream (in this process): ``handler,
        topics, group, consumer, handled, rate, errors, dead_lettered, last_error``."""
        out = []
        subs = [s for s in list(self.stream._subscriptions) if isinstance(s, Subscription)]
        for sub in sorted(subs, key=lambda s: (s.topics, id(s))):
            st = sub.stats
            out.append(
                {
                    "handler": getattr(sub.handler, "__qualname__", repr(sub.handler)),
                    "topics": list(sub.topics),
                    "group": sub.group,
                    "consumer": sub.consumer,
                    "handled": st.handled,
                    "rate": st.rate,
                    "errors": st.errors + st.undecodable,
                    "dead_lettered": st.dead_lettered,
                    "last_error": st.last_error,
                }
            )
        return out

    def _consumers_html(self, rows: list[dict[str, Any]]) -> str:
        if not rows:
            return ""
        head = (
            "<tr><th>consumer</th><th>topics</th><th>group</th><th class='num'>handled</th>"
            "<th class='num'>msg/s</th><th class='num'>errors</th>"
            "<th class='num'>dead-lettered</th><th>last error</th></tr>"
        )
        body = []
        for r in rows:
            group = f"{r['group']} / {r['consumer']}" if r["group"] else ""
            err = "echo-status-err" if r["errors"] else ""
            body.append(
                f"<tr><td>{esc(r['handler'])}</td><td>{esc(', '.join(r['topics']))}</td>"
                f"<td>{esc(group)}</td>"
                f'<td class="num echo-handled">{fmt_count(r["handled"])}</td>'
                f'<td class="num">{fmt_rate(r["rate"])}</td>'
                f'<td class="num echo-errors {err}">{fmt_count(r["errors"])}</td>'
                f'<td class="num">{fmt_count(r["dead_lettered"])}</td>'
                f'<td class="{err}">{esc(_short(r["last_error"] or "", 80))}</td></tr>'
            )
        return (
            '<div class="echo-sub" style="margin-top:6px">consumers in this process</div>'
            f'<table class="echo-table">{head}{"".join(body)}</table>'
        )

    def _newest_html(self) -> str:
        envs = self.newest()
        if not envs:
            return '<div class="echo-empty">no messages yet</div>'
        keys: list[str] = []
        for env in envs:
            data = env.data if isinstance(env.data, dict) else _as_dict(env.data)
            for k in data:
                if k not in keys and len(keys) < 8:
                    keys.append(k)
        head = "<tr><th>id</th><th>time (UTC)</th>" + "".join(f"<th>{esc(k)}</th>" for k in keys)
        head += "</tr>"
        body = []
        for env in envs:
            data = env.data if isinstance(env.data, dict) else _as_dict(env.data)
            cells = "".join(f"<td>{esc(_short(data.get(k, '')))}</td>" for k in keys)
            body.append(
                f'<tr><td class="echo-mono">{esc(env.id)}</td>'
                f"<td>{fmt_id_time(env.id)}</td>{cells}</tr>"
            )
        return f'<table class="echo-table echo-newest">{head}{"".join(body)}</table>'

    def refresh(self) -> None:
        """Take a sample and redraw now (the timer does this by itself)."""
        self.stream.runtime.run(self._tick())

    # -- publish form -------------------------------------------------------------------------
    def publish_form(self) -> str | None:
        """Publish the form's JSON body to its topic (what the Publish button does);
        return the new id, or None after showing what is wrong."""
        topic = self.pub_topic.value.strip()
        if not topic:
            return self._status("give a topic", ok=False)
        try:
            body = orjson.loads(self.pub_body.value or "{}")
        except orjson.JSONDecodeError as exc:
            return self._status(f"body is not JSON: {exc}", ok=False)
        if not isinstance(body, dict):
            return self._status("body must be a JSON object", ok=False)
        try:
            id_ = self.stream.publish(topic, body)
        except Exception as exc:
            return self._status(f"{type(exc).__name__}: {exc}", ok=False)
        self._status(f"published {id_} to {topic}", ok=True)
        return id_

    def _status(self, text: str, *, ok: bool) -> None:
        cls = "echo-status-ok" if ok else "echo-status-err"
        self.pub_status.value = f'<span class="{cls}">{esc(text)}</span>'

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop polling, the readers and the timer (the widget stays, frozen)."""
        if self._stopping:
            return
        self._stopping = True
        self.ticker.stop()
        if not self.stream._closed:
            self.stream.runtime.run(self._astop())

    async def _astop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop and close the widget."""
        self.stop()
        super().close()


def _as_dict(data: Any) -> dict[str, Any]:
    if hasattr(data, "__dataclass_fields__"):
        return {k: getattr(data, k) for k in data.__dataclass_fields__}
    return {"value": data}


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"
