"""The small async interface every stream backend implements.

A backend stores per-topic append-only logs of flat field maps with ``"<ms>-<seq>"`` ids,
and offers fan-out cursors, consumer-group cursors and introspection. It knows nothing of
messages, codecs, threads or notebooks: :class:`echo_lab.Stream` adds those on top.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..codec import Fields
from ..ids import Position

__all__ = ["Backend", "Cursor", "GroupCursor", "GroupEntry", "RawEntry"]

#: One stored entry: ``(id, fields)``.
RawEntry = tuple[str, Fields]
#: One entry read through a group: ``(id, fields, deliveries)``; deliveries is 1 the first time.
GroupEntry = tuple[str, Fields, int]


class Cursor(ABC):
    """A fan-out reader at a position in one topic's log (every reader sees every entry)."""

    topic: str
    #: Id of the last entry returned (or the resolved start position).
    last_id: str

    @abstractmethod
    async def read(self, count: int, timeout: float | None) -> list[RawEntry]:
        """Return up to ``count`` entries after ``last_id``, waiting up to ``timeout`` seconds
        (``None``: forever) for at least one; an empty list on timeout."""

    @abstractmethod
    async def close(self) -> None:
        """Release the cursor (idempotent)."""


class GroupCursor(ABC):
    """One member of a consumer group: entries are split between the group's members."""

    topic: str
    group: str
    consumer: str

    @abstractmethod
    async def read(self, count: int, timeout: float | None) -> list[GroupEntry]:
        """Return up to ``count`` entries for this member: first its own unacknowledged
        entries (after a restart), then entries idle longer than ``claim_idle`` in other
        members, then new entries; wait up to ``timeout`` for at least one."""

    @abstractmethod
    async def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge handled entries (they leave the pending list)."""

    @abstractmethod
    async def close(self) -> None:
        """Leave the group (pending entries stay pending, to be claimed)."""


class Backend(ABC):
    """Async storage of topic logs. Subclasses are created by :func:`echo_lab.connect`."""

    #: URL schemes this backend serves.
    schemes: ClassVar[tuple[str, ...]] = ()

    #: Optional blocking twin of :meth:`append` callable from any thread but the runtime
    #: loop's, for backends that can append without a hop to the loop (``None`` if not).
    append_sync: Callable[[str, Sequence[Fields], int], list[str]] | None = None

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options: Any) -> Backend:
        """Build a backend from its URL and backend-specific options.

        Raises:
            ValueError: for a malformed URL or an unknown option (named).
        """

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL, without any password."""

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections; raise ``ConnectionError`` naming host and port if unreachable."""

    @abstractmethod
    async def append(self, topic: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        """Append entries to ``topic`` (created if absent), keep at most ``maxlen``; return ids."""

    @abstractmethod
    async def cursor(self, topic: str, start: Position) -> Cursor:
        """Open a fan-out cursor; ``"$"`` is resolved now, so later appends are all seen."""

    @abstractmethod
    async def group_cursor(
        self, topic: str, group: str, consumer: str, start: Position, claim_idle: float
    ) -> GroupCursor:
        """Join ``group`` on ``topic`` as ``consumer`` (creating the group at ``start`` if new)."""

    @abstractmethod
    async def range(
        self,
        topic: str,
        start: str = "-",
        end: str = "+",
        count: int | None = None,
        *,
        reverse: bool = False,
    ) -> list[RawEntry]:
        """Entries with ``start <= id <= end`` (``"-"``/``"+"``: the ends), oldest first; the
        first ``count`` of them. ``reverse=True``: newest first, and ``count`` is taken from
        the newest end (as ``XREVRANGE``: the newest few entries cost what they are)."""

    @abstractmethod
    async def topics(self) -> list[str]:
        """Names of the existing topics, sorted."""

    @abstractmethod
    async def info(self, topic: str) -> dict[str, Any]:
        """``{"topic", "length", "first_id", "last_id", "groups", "added"}`` (length 0 if
        absent). ``added`` counts every entry ever appended to the topic, trimmed ones too
        (0 if absent; ``None`` where the store cannot tell, e.g. Redis < 7): a counter
        widgets can poll instead of reading the entries."""

    async def infos(self, topics: Sequence[str]) -> list[dict[str, Any]]:
        """:meth:`info` of several topics, in order (a backend may send them in one round
        trip; this default asks concurrently)."""
        return list(await asyncio.gather(*(self.info(topic) for topic in topics)))

    @abstractmethod
    async def groups(self, topic: str) -> list[dict[str, Any]]:
        """One dict per group: ``name, consumers, pending, last_delivered_id, lag``."""

    @abstractmethod
    async def pending(self, topic: str, group: str) -> list[dict[str, Any]]:
        """One dict per unacknowledged entry: ``id, consumer, idle (s), deliveries``."""

    @abstractmethod
    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledge ``ids`` in ``group``; return how many were pending."""

    @abstractmethod
    async def claim(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        """Move pending ``ids`` to ``consumer`` (counting a delivery); return the ids moved."""

    @abstractmethod
    async def delete(self, topic: str) -> None:
        """Delete the topic, its entries and its groups."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close connections and wake every waiting reader (idempotent)."""
