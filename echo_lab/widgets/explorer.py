"""``stream.explore()``: topics, consumer groups, pending entries and dead letters, with
buttons to acknowledge, claim to another consumer and replay a dead letter.

Everything shown comes from the backend's introspection calls (``topics``, ``info``,
``groups``, ``pending``, ``range``), polled on a timer on the runtime loop; the buttons act
on the real backend through the stream, so the explorer works the same on every backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import orjson

from ..errors import GroupError
from ._refresh import Ticker, esc, fmt_count
from ._style import style_widget

if TYPE_CHECKING:
    from ..codec import Fields
    from ..stream import Stream

__all__ = ["Explorer", "original_fields"]

_DEAD = ".dead"
DASH = "\u2013"
_DETAILS = ("error", "source_id", "deliveries")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def dead_details(fields: Fields) -> dict[str, str]:
    """``error``, ``source_id`` and ``deliveries`` of a dead letter's stored fields."""
    out: dict[str, str] = {}
    if "headers" in fields:
        try:
            headers = orjson.loads(fields["headers"])
        except orjson.JSONDecodeError:
            headers = {}
        if isinstance(headers, dict):
            out.update({k: str(headers[k]) for k in _DETAILS if k in headers})
    for k in _DETAILS:
        if f"dead.{k}" in fields:
            out[k] = _text(fields[f"dead.{k}"])
    return out


def original_fields(fields: Fields) -> dict[str, Any]:
    """A dead letter's stored fields without the dead-letter details: the original entry."""
    out: dict[str, Any] = {k: v for k, v in fields.items() if not k.startswith("dead.")}
    if "headers" in out and "data" in out:
        try:
            headers = orjson.loads(out["headers"])
        except orjson.JSONDecodeError:
            return out
        if isinstance(headers, dict):
            for k in _DETAILS:
                headers.pop(k, None)
            if headers:
                out["headers"] = orjson.dumps(headers)
            else:
                del out["headers"]
    return out


class Explorer(widgets.VBox):
    """Browse a stream's topics, groups, pending entries and dead letters (``stream.explore()``).

    Pick a topic to see its consumer groups (members, pending, lag) and dead letters; pick a
    group to see its pending entries. Select entries and press *Ack*, *Claim to* (another
    member) or *Replay* (re-publish a dead letter to its topic). The same actions are methods:
    :meth:`ack`, :meth:`claim`, :meth:`replay`.

    Args:
        stream: the stream to explore.
        interval: seconds between refreshes (at least 0.1).
        dead_letters: how many of the newest dead letters are listed.
        pending: how many pending entries of the chosen group are listed (oldest first).
    """

    def __init__(
        self,
        stream: Stream,
        *,
        interval: float = 1.0,
        dead_letters: int = 50,
        pending: int = 500,
    ) -> None:
        self.stream = stream
        self.dead_limit = int(dead_letters)
        self.pending_limit = int(pending)
        #: ``info()`` of every topic, as of the last refresh.
        self.topic_rows: list[dict[str, Any]] = []
        #: ``groups()`` of the chosen topic.
        self.group_rows: list[dict[str, Any]] = []
        #: ``pending()`` of the chosen group.
        self.pending_rows: list[dict[str, Any]] = []
        #: the chosen topic's newest dead letters: ``id, source_id, error, deliveries, fields``.
        self.dead_rows: list[dict[str, Any]] = []
        self._updating = False
        self._dead_cache: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None

        self.title = widgets.HTML(
            f'<span class="echo-title">echo_lab explorer</span> '
            f'<span class="echo-sub">{esc(stream.backend.url)}</span>'
        )
        self.refresh_button = widgets.Button(
            description="Refresh", icon="refresh", layout=widgets.Layout(width="100px")
        )
        self.topics_html = widgets.HTML()
        self.topic = widgets.Dropdown(
            options=[], description="topic", layout=widgets.Layout(width="320px")
        )
        self.groups_html = widgets.HTML()
        self.group = widgets.Dropdown(
            options=[], description="group", layout=widgets.Layout(width="320px")
        )
        self.pending = widgets.SelectMultiple(
            options=[], rows=6, description="pending", layout=widgets.Layout(width="560px")
        )
        self.ack_button = widgets.Button(description="Ack", icon="check", button_style="success")
        self.claim_to = widgets.Text(placeholder="consumer", layout=widgets.Layout(width="160px"))
        self.claim_button = widgets.Button(description="Claim to", icon="hand-paper-o")
        self.dead = widgets.SelectMultiple(
            options=[], rows=5, description="dead", layout=widgets.Layout(width="720px")
        )
        self.replay_button = widgets.Button(
            description="Replay", icon="repeat", button_style="warning"
        )
        self.status = widgets.HTML()
        for w, cls in (
            (self.refresh_button, "echo-explorer-refresh"),
            (self.topics_html, "echo-explorer-topics"),
            (self.topic, "echo-explorer-topic"),
            (self.groups_html, "echo-explorer-groups"),
            (self.group, "echo-explorer-group"),
            (self.pending, "echo-explorer-pending"),
            (self.ack_button, "echo-explorer-ack"),
            (self.claim_to, "echo-explorer-claim-to"),
            (self.claim_button, "echo-explorer-claim"),
            (self.dead, "echo-explorer-dead"),
            (self.replay_button, "echo-explorer-replay"),
            (self.status, "echo-explorer-status"),
        ):
            w.add_class(cls)
        self.refresh_button.on_click(lambda _: self.refresh())
        self.ack_button.on_click(lambda _: self._act(self.ack))
        self.claim_button.on_click(lambda _: self._act(lambda: self.claim(self.claim_to.value)))
        self.replay_button.on_click(lambda _: self._act(self.replay))
        self.topic.observe(self._on_choice, "value")
        self.group.observe(self._on_choice, "value")

        section = widgets.Layout(margin="8px 0 0 0")
        super().__init__(
            [
                style_widget(),
                widgets.HBox(
                    [self.title, self.refresh_button],
                    layout=widgets.Layout(justify_content="space-between", align_items="center"),
                ),
                self.topics_html,
                widgets.HBox([self.topic], layout=section),
                self.groups_html,
                self.group,
                self.pending,
                widgets.HBox([self.ack_button, self.claim_button, self.claim_to]),
                widgets.HTML('<span class="echo-sub">dead letters of the topic</span>'),
                self.dead,
                self.replay_button,
                self.status,
            ],
            layout=widgets.Layout(padding="4px 6px", width="100%"),
        )
        self.add_class("echo-w")
        self.add_class("echo-explorer")
        self.refresh()
        self.ticker = Ticker(stream.runtime, self._arefresh, interval)
        self.ticker.start()

    # -- choices ------------------------------------------------------------------------------
    def _on_choice(self, _: Any) -> None:
        if not self._updating:
            self.refresh()

    def select(self, topic: str, group: str | None = None) -> None:
        """Choose a topic (and a group of it), then refresh."""
        self.refresh()  # so the topic is among the options
        self._updating = True
        try:
            self.topic.value = topic
        finally:
            self._updating = False
        self.refresh()
        if group is not None:
            self._updating = True
            try:
                self.group.value = group
            finally:
                self._updating = False
            self.refresh()

    # -- refresh (runtime loop) -------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read everything shown from the backend now (the timer does this by itself)."""
        if self.stream._closed:
            return
        self.stream.runtime.run(self._arefresh())

    async def _arefresh(self) -> None:
        stream = self.stream
        if stream._closed:
            self.ticker.stop()
            return
        backend = stream.backend
        names = await backend.topics()
        infos = list(await asyncio.gather(*(backend.info(n) for n in names)))
        topic = self.topic.value if self.topic.value in names else None
        if topic is None:
            plain = [n for n in names if not n.endswith(_DEAD)]
            topic = plain[0] if plain else (names[0] if names else None)
        groups: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        group = None
        if topic is not None:
            groups = await backend.groups(topic)
            gnames = [g["name"] for g in groups]
            group = self.group.value if self.group.value in gnames else None
            if group is None and gnames:
                group = gnames[0]
            if group is not None:
                try:
                    pending = await backend.pending(topic, group)
                except GroupError:
                    pending = []
            dead_info = next((i for i in infos if i["topic"] == f"{topic}{_DEAD}"), None)
            if dead_info is not None:
                dead = await self._dead_letters(f"{topic}{_DEAD}", dead_info)
        self.topic_rows, self.group_rows = infos, groups
        self.pending_rows, self.dead_rows = pending, dead
        self._updating = True
        try:
            self._draw(names, topic, group)
        finally:
            self._updating = False

    async def _dead_letters(self, dead_topic: str, info: dict[str, Any]) -> list[dict[str, Any]]:
        """The newest dead letters, re-read only when the dead-letter topic changed."""
        key = (dead_topic, info.get("length"), info.get("last_id"))
        if self._dead_cache is not None and self._dead_cache[0] == key:
            return self._dead_cache[1]
        entries = await self.stream.backend.range(dead_topic, "-", "+", None)
        rows = [
            {"id": id_, **dead_details(fields), "fields": fields}
            for id_, fields in entries[-self.dead_limit :][::-1]
        ]
        self._dead_cache = (key, rows)
        return rows

    def _draw(self, names: list[str], topic: str | None, group: str | None) -> None:
        _set_options(self.topic, names, topic)
        _set_options(self.group, [g["name"] for g in self.group_rows], group)
        self.topics_html.value = self._topics_html(names, topic)
        self.groups_html.value = self._groups_html(topic)
        _set_options(
            self.pending,
            [
                (f"{p['id']} · {p['consumer']} · {p['deliveries']} deliveries", p["id"])
                for p in self.pending_rows[: self.pending_limit]
            ],
        )
        _set_options(
            self.dead,
            [
                (
                    f"{d['id']} · from {d.get('source_id', '?')} · "
                    f"{d.get('deliveries', '?')} deliveries · {d.get('error', '')[:80]}",
                    d["id"],
                )
                for d in self.dead_rows
            ],
        )

    def _topics_html(self, names: list[str], chosen: str | None) -> str:
        if not self.topic_rows:
            return '<div class="echo-empty">no topics yet</div>'
        lengths = {i["topic"]: i["length"] for i in self.topic_rows}
        head = (
            "<tr><th>topic</th><th class='num'>length</th><th>first id</th><th>last id</th>"
            "<th class='num'>groups</th><th class='num'>dead letters</th></tr>"
        )
        body = []
        for info in self.topic_rows:
            name = info["topic"]
            cls = "echo-selected" if name == chosen else ""
            if name.endswith(_DEAD):
                cls += " echo-dead"
            groups = info.get("groups")
            groups = len(groups) if isinstance(groups, list | tuple) else groups
            dead = lengths.get(f"{name}{_DEAD}", 0)
            body.append(
                f'<tr class="{cls}" data-topic="{esc(name)}">'
                f'<td class="echo-topic">{esc(name)}</td>'
                f'<td class="num echo-length">{fmt_count(info["length"])}</td>'
                f'<td class="echo-mono">{esc(info.get("first_id") or DASH)}</td>'
                f'<td class="echo-mono">{esc(info.get("last_id") or DASH)}</td>'
                f'<td class="num">{esc(groups or 0)}</td>'
                f'<td class="num">{fmt_count(dead) if dead else ""}</td></tr>'
            )
        return f'<table class="echo-table">{head}{"".join(body)}</table>'

    def _groups_html(self, topic: str | None) -> str:
        if topic is None:
            return ""
        if not self.group_rows:
            return f'<div class="echo-empty">no consumer groups on {esc(topic)}</div>'
        head = (
            "<tr><th>group</th><th class='num'>consumers</th><th class='num'>pending</th>"
            "<th>last delivered</th><th class='num'>lag</th></tr>"
        )
        body = []
        for g in self.group_rows:
            consumers = g.get("consumers")
            if isinstance(consumers, list | tuple | set):
                consumers = len(consumers)
            lag = g.get("lag")
            body.append(
                f'<tr data-group="{esc(g["name"])}"><td>{esc(g["name"])}</td>'
                f'<td class="num">{esc(consumers)}</td>'
                f'<td class="num echo-pending">{fmt_count(g.get("pending") or 0)}</td>'
                f'<td class="echo-mono">{esc(g.get("last_delivered_id") or DASH)}</td>'
                f'<td class="num">{DASH if lag is None else fmt_count(lag)}</td></tr>'
            )
        return f'<table class="echo-table">{head}{"".join(body)}</table>'

    # -- actions (on the real backend) ------------------------------------------------------
    def _act(self, action: Any) -> None:
        try:
            text = action()
        except Exception as exc:
            self.status.value = f'<span class="echo-status-err">{esc(type(exc).__name__)}: ' + (
                f"{esc(exc)}</span>"
            )
        else:
            self.status.value = f'<span class="echo-status-ok">{esc(text)}</span>'

    def _chosen(self) -> tuple[str, str]:
        topic, group = self.topic.value, self.group.value
        if not topic or not group:
            raise ValueError("choose a topic and a group first")
        return topic, group

    def ack(self, ids: Sequence[str] | None = None) -> str:
        """Acknowledge pending entries (default: the selected ones) of the chosen group."""
        topic, group = self._chosen()
        ids = list(ids if ids is not None else self.pending.value)
        if not ids:
            raise ValueError("select pending entries first")
        n = self.stream.ack(topic, group, ids)
        self.refresh()
        return f"acknowledged {n} of {len(ids)} in {group} on {topic}"

    def claim(self, consumer: str, ids: Sequence[str] | None = None) -> str:
        """Give pending entries (default: the selected ones) to ``consumer`` of the group."""
        topic, group = self._chosen()
        consumer = consumer.strip()
        if not consumer:
            raise ValueError("name the consumer to claim to")
        ids = list(ids if ids is not None else self.pending.value)
        if not ids:
            raise ValueError("select pending entries first")
        moved = self.stream.claim(topic, group, consumer, ids)
        self.refresh()
        return f"claimed {len(moved)} of {len(ids)} to {consumer}"

    def replay(self, ids: Sequence[str] | None = None) -> str:
        """Re-publish dead letters (default: the selected ones) to their topic, as they were
        first published (without the dead-letter details); return what was done."""
        topic = self.topic.value
        if not topic:
            raise ValueError("choose a topic first")
        ids = list(ids if ids is not None else self.dead.value)
        if not ids:
            raise ValueError("select dead letters first")
        new_ids = self.stream.runtime.run(self._areplay(topic, ids))
        self.refresh()
        return f"replayed {len(new_ids)} to {topic}: {', '.join(new_ids)}"

    async def _areplay(self, topic: str, ids: list[str]) -> list[str]:
        backend = self.stream.backend
        entries = []
        for id_ in ids:
            entries += await backend.range(f"{topic}{_DEAD}", id_, id_, 1)
        if not entries:
            return []
        originals = [original_fields(fields) for _, fields in entries]
        return await backend.append(topic, originals, self.stream.maxlen)

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop refreshing."""
        self.ticker.stop()

    def close(self) -> None:
        """Stop and close the widget."""
        self.stop()
        super().close()


def _set_options(w: Any, options: list[Any], value: Any = None) -> None:
    """Set a selection widget's options only if they changed, keeping the selection."""
    if list(w.options) == [tuple(o) if isinstance(o, tuple) else o for o in options] and (
        value is None or w.value == value
    ):
        return
    old = w.value
    w.options = options
    if isinstance(w, widgets.SelectMultiple):
        values = {o[1] if isinstance(o, tuple) else o for o in options}
        w.value = tuple(v for v in old if v in values)
    elif value is not None:
        w.value = value
