"""Publishing timed items in the background: what replays and simulators share.

A :class:`TimedPublisher` takes ``(offset_seconds, topic, payload)`` items in order and
publishes each at its offset from the start, on the runtime loop. The schedule is absolute
(no drift accumulates) and items due together for one topic go out as one batch.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from .stream import Stream

__all__ = ["TimedPublisher"]

#: Timed item: seconds after the start, topic, payload (dict or Message).
Item = tuple[float, str, Any]

_BATCH = 1000


class TimedPublisher:
    """A background publisher of timed items: ``sent``, ``rate``, ``wait()``, ``stop()``.

    Attributes:
        total: how many items it will publish (``None``: until stopped).
        sent: items published so far.
        error: the exception that ended it early, if any.
    """

    def __init__(self, stream: Stream, items: Iterable[Item], total: int | None = None) -> None:
        self.stream = stream
        self.total = total
        self.sent = 0
        self.error: BaseException | None = None
        self._items = iter(items)
        self._stopping = False
        self._done = threading.Event()
        self._started = time.monotonic()
        self._ended: float | None = None
        self._future = stream.runtime.spawn(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        items, publish = self._items, self.stream.apublish_many
        pending: Item | None = None
        try:
            t0 = loop.time()
            while not self._stopping:
                if pending is None and (pending := next(items, None)) is None:
                    break
                delay = t0 + pending[0] - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = loop.time() - t0
                topic, batch, pending = pending[1], [pending[2]], None
                while len(batch) < _BATCH:  # everything due now for this topic: one batch
                    nxt = next(items, None)
                    if nxt is None:
                        break
                    if nxt[0] > now or nxt[1] != topic:
                        pending = nxt
                        break
                    batch.append(nxt[2])
                await publish(topic, batch)
                self.sent += len(batch)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self.error = exc
        finally:
            self._ended = time.monotonic()
            self._done.set()

    @property
    def running(self) -> bool:
        """True until every item is published (or it is stopped)."""
        return not self._done.is_set()

    @property
    def rate(self) -> float:
        """Items published per second."""
        end = self._ended if self._ended is not None else time.monotonic()
        return self.sent / max(end - self._started, 1e-9)

    def wait(self, timeout: float | None = None, *, progress: bool | None = None) -> bool:
        """Block until it ends; return False if ``timeout`` s passed first.

        Args:
            timeout: seconds to wait at most (``None``: until done).
            progress: show a tqdm progress bar (default: when stderr is a terminal).

        Raises:
            Exception: whatever made it fail (e.g. an unreachable backend).
        """
        if self.stream.runtime.in_loop_thread():
            raise RuntimeError("cannot wait from a handler: this work runs on the same loop")
        if progress is None:
            progress = sys.stderr.isatty()
        if not progress:
            finished = self._done.wait(timeout)
        else:
            from tqdm.auto import tqdm

            deadline = None if timeout is None else time.monotonic() + timeout
            with tqdm(total=self.total, unit="msg", desc=type(self).__name__.lower()) as bar:
                while True:
                    left = None if deadline is None else deadline - time.monotonic()
                    finished = self._done.wait(0.1 if left is None else max(0, min(0.1, left)))
                    bar.update(self.sent - bar.n)
                    if finished or (left is not None and left <= 0):
                        break
        if self.error is not None:
            raise self.error
        return finished

    def stop(self) -> Self:
        """Stop publishing (what was sent stays sent). Returns ``self``."""
        self._stopping = True
        if not self._done.is_set():
            self._future.cancel()
            if not self.stream.runtime.in_loop_thread():
                self._done.wait(5)
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
