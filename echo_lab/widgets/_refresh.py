"""A throttled timer on the runtime loop, and small formatting helpers shared by the widgets.

Widgets never sit in the message path: background readers only bump counters, and a
:class:`Ticker` redraws from those counters at most ``1 / MIN_INTERVAL`` times a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from ..runtime import Runtime

__all__ = ["MIN_INTERVAL", "Ticker", "fmt_age", "fmt_bytes", "fmt_count", "sparkline_svg"]

logger = logging.getLogger("echo_lab")

#: Redraws happen at most this often (seconds): 10 per second whatever the message rate.
MIN_INTERVAL = 0.1


class Ticker:
    """Calls ``tick()`` (a function or a coroutine function) every ``interval`` seconds (at
    least :data:`MIN_INTERVAL`) on the runtime loop until :meth:`stop`; an exception in
    ``tick`` is logged, never fatal.

    With ``thread=True`` the call runs in a worker thread so heavier redraws (parsing a
    capture's new rows) never hold up the consumers on the loop.
    """

    def __init__(
        self,
        runtime: Runtime,
        tick: Callable[[], object],
        interval: float,
        *,
        thread: bool = False,
    ) -> None:
        self.runtime = runtime
        self.tick = tick
        self.interval = max(float(interval), MIN_INTERVAL)
        self.thread = thread
        self.ticks = 0  #: redraws done so far
        self._future: concurrent.futures.Future[None] | None = None
        self._stopping = False
        self._logged = False

    @property
    def running(self) -> bool:
        """True while the timer runs."""
        return self._future is not None and not self._future.done()

    def start(self) -> Ticker:
        """Start the timer (idempotent); returns ``self``."""
        if not self.running:
            self._stopping = False
            self._future = self.runtime.spawn(self._run())
        return self

    async def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping:
            next_at += self.interval
            try:
                if self.thread:
                    await asyncio.to_thread(self.tick)
                else:
                    result = self.tick()
                    if inspect.isawaitable(result):
                        await result
                self.ticks += 1
            except Exception:
                if not self._logged:
                    logger.exception("widget refresh failed (further failures not logged)")
                    self._logged = True
            now = time.monotonic()
            if next_at < now:  # fell behind: never catch up with a burst of redraws
                next_at = now
            await asyncio.sleep(max(next_at - now, 0.0))

    def stop(self) -> None:
        """Stop the timer (a redraw in progress finishes)."""
        self._stopping = True
        future = self._future
        if future is not None and not future.done():
            self.runtime.loop.call_soon_threadsafe(future.cancel)


def fmt_count(n: float) -> str:
    """``1234567`` -> ``'1,234,567'``."""
    return f"{int(n):,}"


def fmt_rate(r: float) -> str:
    """A rate in msg/s, short."""
    if r >= 100:
        return f"{r:,.0f}"
    if r >= 10:
        return f"{r:.1f}"
    return f"{r:.2f}"


def fmt_bytes(n: float) -> str:
    """``2048`` -> ``'2.0 KB'``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def fmt_age(seconds: float | None) -> str:
    """Seconds since something happened, short (``'0.4 s ago'``, ``'3 min ago'``)."""
    if seconds is None or math.isnan(seconds):
        return "\u2013"
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def fmt_id_time(id_: str) -> str:
    """The wall-clock time (UTC, ms) of an ``"<ms>-<seq>"`` id."""
    try:
        ms = int(id_.partition("-")[0])
    except ValueError:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def esc(value: object) -> str:
    """HTML-escape anything."""
    return html.escape(str(value), quote=True)


def sparkline_svg(values: Sequence[float], width: int = 120, height: int = 22) -> str:
    """A tiny inline SVG line (and area) of ``values``, scaled to its own maximum."""
    n = len(values)
    if n < 2:
        return f'<svg class="echo-spark" width="{width}" height="{height}"></svg>'
    top = max(max(values), 1e-9)
    step = width / (n - 1)
    pts = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    area = f"0,{height} {pts} {width},{height}"
    return (
        f'<svg class="echo-spark" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f'<polygon points="{area}" fill="var(--echo-accent)" fill-opacity="0.18"/>'
        f'<polyline points="{pts}" fill="none" stroke="var(--echo-accent)" '
        'stroke-width="1.5" stroke-linejoin="round"/></svg>'
    )
