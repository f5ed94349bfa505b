"""The result row every benchmark module returns, and the table printer."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Counter", "Row", "best_rates", "print_table"]


class Counter:
    """A handler that counts messages and sets ``done`` at the ``n``-th (``acall`` for an
    async handler)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = threading.Event()

    def __call__(self, env: Any) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set()

    async def acall(self, env: Any) -> None:
        self(env)


@dataclass
class Row:
    """One measured path: echo_lab's figure beside the raw library's (higher is better
    unless ``unit`` is a latency, where the ratio is raw/ours so that > 1 is still better)."""

    group: str
    path: str
    ours: float
    raw: float
    unit: str = "msg/s"
    bar: float | None = None  #: the ratio the issue asks for, if any

    @property
    def ratio(self) -> float:
        if self.unit in ("µs", "ms", "s", "MB"):  # smaller is better
            return self.raw / self.ours if self.ours else 0.0
        return self.ours / self.raw if self.raw else 0.0


def best_rates(*fns: Callable[[], int], repeats: int = 5) -> list[float]:
    """Run each ``fn`` (returns how many messages it moved) ``repeats`` times, taking turns,
    so that a slow spell of a noisy machine hits every path alike; best msg/s of each."""
    best = [0.0] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            n = fn()
            best[i] = max(best[i], n / (time.perf_counter() - t0))
    return best


def _fmt(value: float, unit: str) -> str:
    if unit == "msg/s":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def print_table(rows: list[Row]) -> None:
    """Print rows as a Markdown table (paste it into notes and the README)."""
    print("| group | path | echo_lab | raw | unit | ratio | bar |")
    print("|---|---|---:|---:|---|---:|---|")
    for r in rows:
        bar = "" if r.bar is None else f">= {r.bar:g} {'ok' if r.ratio >= r.bar else 'MISSED'}"
        print(
            f"| {r.group} | {r.path} | {_fmt(r.ours, r.unit)} | {_fmt(r.raw, r.unit)} "
            f"| {r.unit} | {math.floor(r.ratio * 100) / 100:.2f} | {bar} |"  # 0.499 is not 0.50
        )
