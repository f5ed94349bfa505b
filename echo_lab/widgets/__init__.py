"""Live ipywidgets views of a stream: :class:`Monitor` (``stream.monitor()``),
:class:`LivePlot` (``cap.plot(field, by=..., window=...)``) and :class:`Explorer`
(``stream.explore()``).

Widgets never sit in the message path: background readers only bump counters and a timer
on the runtime loop redraws from them, at most ~10 times a second.
"""

from __future__ import annotations

from .explorer import Explorer
from .monitor import Monitor, TopicStats
from .plot import LivePlot

__all__ = ["Explorer", "LivePlot", "Monitor", "TopicStats"]
