"""``cap.plot(field, by=None, window=60)``: a live bqplot line chart of a capture's field.

The chart reads the capture's new rows (``cap.since(seen)``) on a throttled timer in a
worker thread, keeps the last ``window`` seconds per line and sends only the changed arrays
to the browser: no images are redrawn, and the capture's own reader is never slowed.
"""

from __future__ import annotations

import collections
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import bqplot
import ipywidgets as widgets
import numpy as np
import pandas as pd

from ._refresh import Ticker, esc, fmt_count
from ._style import PALETTE, style_widget

if TYPE_CHECKING:
    from ..capture import Capture

__all__ = ["LivePlot"]

_NS = 1_000_000_000


class _Series:
    __slots__ = ("x", "y")

    def __init__(self, max_points: int) -> None:
        self.x: collections.deque[int] = collections.deque(maxlen=max_points)  # ns since epoch
        self.y: collections.deque[float] = collections.deque(maxlen=max_points)


class LivePlot(widgets.VBox):
    """A live line chart of a numeric field of a capture, one line per value of ``by``.

    Args:
        capture: the :class:`~echo_lab.Capture` to plot (it keeps recording by itself).
        field: the numeric column to plot (a nested field as ``"a.b"``).
        by: a column whose values split the rows into lines (e.g. ``"sensor"``); None: one line.
        window: seconds of history shown; the chart scrolls with the newest message.
        interval: seconds between redraws (at least 0.1).
        max_points: points kept per line (the oldest are dropped first).
        max_lines: lines drawn at most (values of ``by`` beyond it are counted, not drawn).
        title: the chart's title (default: the field, and ``by``).
        height: the chart's CSS height.
    """

    def __init__(
        self,
        capture: Capture,
        field: str,
        by: str | None = None,
        window: float = 60.0,
        *,
        interval: float = 0.25,
        max_points: int = 2_000,
        max_lines: int = 12,
        title: str | None = None,
        height: str = "320px",
    ) -> None:
        if not isinstance(field, str) or not field:
            raise ValueError(f"field must be a column name, got {field!r}")
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.capture = capture
        self.field = field
        self.by = by
        self.window = float(window)
        self.max_points = int(max_points)
        self.max_lines = int(max_lines)
        self.series: dict[str, _Series] = {}
        self.lines: dict[str, bqplot.Lines] = {}
        self.points = 0  #: points inside the window after the last redraw
        self.skipped = 0  #: rows without a numeric value of the field
        self._seen = 0
        self._lock = threading.Lock()

        self.x_scale = bqplot.DateScale()
        self.y_scale = bqplot.LinearScale()
        x_axis = bqplot.Axis(
            scale=self.x_scale, label="time (UTC)", tick_format="%H:%M:%S", num_ticks=6
        )
        y_axis = bqplot.Axis(scale=self.y_scale, side="left", label=field, label_offset="45px")
        self.figure = bqplot.Figure(
            marks=[],
            axes=[x_axis, y_axis],
            title=title if title is not None else (f"{field} by {by}" if by else field),
            animation_duration=0,
            fig_margin={"top": 40, "bottom": 40, "left": 60, "right": 40},
            layout=widgets.Layout(width="100%", height=height),
        )
        self.figure.add_class("echo-plot-figure")
        self.status = widgets.HTML()
        self.status.add_class("echo-plot-status")
        self.legend = widgets.HTML()
        self.legend.add_class("echo-plot-legend")
        super().__init__(
            [style_widget(), self.legend, self.figure, self.status],
            layout=widgets.Layout(width="100%"),
        )
        self.add_class("echo-w")
        self.add_class("echo-plot")
        self._draw_status()
        self.ticker = Ticker(capture.stream.runtime, self._tick, interval, thread=True)
        self.ticker.start()

    # -- reading the capture ------------------------------------------------------------------
    def _read_new(self) -> pd.DataFrame:
        cap = self.capture
        dropped = (cap.count - len(cap)) > self._seen
        frame = cap.since(self._seen)
        self._seen = cap.count if dropped else self._seen + len(frame)
        return frame

    def _add(self, frame: pd.DataFrame) -> None:
        if not len(frame) or self.field not in frame.columns:
            self.skipped += len(frame)
            return
        values = pd.to_numeric(frame[self.field], errors="coerce").to_numpy(dtype="float64")
        ts = frame["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
        xs = ts.to_numpy(dtype="datetime64[ns]").astype("int64")
        ok = ~np.isnan(values)
        self.skipped += int((~ok).sum())
        if self.by is None:
            keys = np.full(len(frame), self.field, dtype=object)
        elif self.by in frame.columns:
            keys = frame[self.by].astype("str").to_numpy(dtype=object)
        else:
            keys = np.full(len(frame), "(none)", dtype=object)
        for key in pd.unique(keys[ok]):
            series = self.series.get(key)
            if series is None:
                if len(self.series) >= self.max_lines:
                    continue
                series = self.series[key] = _Series(self.max_points)
            pick = ok & (keys == key)
            series.x.extend(xs[pick].tolist())
            series.y.extend(values[pick].tolist())

    # -- drawing ------------------------------------------------------------------------------
    def _right_edge(self) -> int:
        newest = max((s.x[-1] for s in self.series.values() if s.x), default=0)
        if self.capture.running:
            return max(time.time_ns(), newest)
        return newest or time.time_ns()

    def _tick(self) -> None:
        if self.capture.stream._closed:  # nothing will come any more: stop redrawing
            self.ticker.stop()
            return
        with self._lock:
            self._add(self._read_new())
            self._draw()

    def _draw(self) -> None:
        right = self._right_edge()
        left = right - int(self.window * _NS)
        oldest = min((s.x[0] for s in self.series.values() if s.x), default=left)
        # while the first window fills, show what there is (at least 5 s), then scroll
        shown = max(left, min(oldest, right - int(min(self.window, 5.0) * _NS)))
        points = 0
        new_marks = False
        for i, (key, series) in enumerate(self.series.items()):
            while series.x and series.x[0] < left:
                series.x.popleft()
                series.y.popleft()
            x = np.fromiter(series.x, dtype="int64", count=len(series.x))
            y = np.fromiter(series.y, dtype="float64", count=len(series.y))
            if len(x) > 1 and (np.diff(x) < 0).any():
                order = np.argsort(x, kind="stable")
                x, y = x[order], y[order]
            points += len(x)
            line = self.lines.get(key)
            if line is None:
                line = bqplot.Lines(
                    x=x.astype("datetime64[ns]").astype("datetime64[ms]"),
                    y=y,
                    scales={"x": self.x_scale, "y": self.y_scale},
                    colors=[PALETTE[i % len(PALETTE)]],
                    labels=[str(key)],
                    display_legend=False,
                    stroke_width=2,
                )
                self.lines[key] = line
                new_marks = True
            else:
                with line.hold_sync():
                    line.x = x.astype("datetime64[ns]").astype("datetime64[ms]")
                    line.y = y
        if new_marks:
            self.figure.marks = list(self.lines.values())
        with self.x_scale.hold_sync():
            self.x_scale.min = _dt(shown)
            self.x_scale.max = _dt(right)
        self.points = points
        self._draw_status()

    def _draw_status(self) -> None:
        legend = ""
        if self.by is not None:  # an HTML legend with each line's latest value: never on a line
            items = []
            for i, (key, series) in enumerate(self.series.items()):
                value = f" <b>{series.y[-1]:.4g}</b>" if series.y else ""
                items.append(
                    f'<span class="echo-legend-item"><span class="echo-swatch" '
                    f'style="background:{PALETTE[i % len(PALETTE)]}"></span>{esc(key)}{value}'
                    "</span>"
                )
            legend = f'<div class="echo-legend">{"".join(items)}</div>'
        self.legend.value = legend
        self.status.value = (
            f'<span class="echo-sub"><b class="echo-plot-points">{fmt_count(self.points)}</b>'
            f" points in the last {self.window:g} s · "
            f'<b class="echo-plot-lines">{len(self.series)}</b> line(s) · '
            f"{fmt_count(self._seen)} rows read</span>"
        )

    def data(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """What is drawn: line key -> (times as ``datetime64[ns]``, values)."""
        with self._lock:
            return {
                k: (np.array(s.x, dtype="int64").astype("datetime64[ns]"), np.array(s.y))
                for k, s in self.series.items()
            }

    def refresh(self) -> None:
        """Read the capture's new rows and redraw now (the timer does this by itself)."""
        self._tick()

    def stop(self) -> None:
        """Stop redrawing (the capture keeps recording)."""
        self.ticker.stop()

    def close(self) -> None:
        """Stop and close the widget."""
        self.stop()
        super().close()


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / _NS, UTC).replace(tzinfo=None)
