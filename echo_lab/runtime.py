"""One background event loop in a daemon thread, and the only sync/async bridge.

Everything that runs in the background (handlers, captures, simulators, widget refresh)
runs on this loop, so it keeps going while a notebook cell computes or sleeps. Sync calls
hop to the loop and wait; async calls made on another loop (a Jupyter cell's) hop to it
too. A sync call made *on* the loop (from inside a handler) runs its coroutine to
completion on the running loop with nest-asyncio2, the one place that needs it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Runtime", "get_runtime"]

T = TypeVar("T")


class Runtime:
    """The background event loop shared by every stream in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._nested = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running background loop (started on first use)."""
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._main, args=(loop, ready), name="echo-lab-runtime", daemon=True
                )
                self._thread.start()
                ready.wait()
                self._thread_id = self._thread.ident
                self._loop = loop
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def in_loop_thread(self) -> bool:
        """True when called from the runtime loop's own thread."""
        return threading.get_ident() == self._thread_id

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the runtime loop and return its result (the sync bridge)."""
        loop = self.loop
        if self.in_loop_thread():
            if not self._nested:
                import nest_asyncio2

                nest_asyncio2.apply(loop)
                self._nested = True
            return loop.run_until_complete(coro)
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"timed out after {timeout} s") from None
        except BaseException:  # KeyboardInterrupt in a cell: stop the work too
            future.cancel()
            raise

    async def hop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the runtime loop from whatever loop is running (the async bridge)."""
        loop = self.loop
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` in the background on the runtime loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Cancel everything on the loop and stop its thread (called at interpreter exit)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = self._thread_id = None
            self._nested = False
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


_RUNTIME = Runtime()
atexit.register(_RUNTIME.stop)


def get_runtime() -> Runtime:
    """Return the process-wide runtime."""
    return _RUNTIME
