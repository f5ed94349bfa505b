"""Entry ids (``"<ms>-<seq>"``, Redis style) and start positions, shared by every backend."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["MAX_SEQ", "IdClock", "Position", "format_id", "parse_id", "parse_start"]

MAX_SEQ = 2**64 - 1

#: A start position: ``"$"`` (new only), ``"0"`` (everything retained), an id or a datetime.
Position = str | datetime


def parse_id(value: str, *, default_seq: int = 0) -> tuple[int, int]:
    """Parse ``"<ms>-<seq>"`` (or a bare ``"<ms>"``) into a comparable ``(ms, seq)`` tuple.

    Raises:
        ValueError: naming the value when it is not an id.
    """
    if not isinstance(value, str):
        raise ValueError(f"invalid message id {value!r}: expected a string like '1700000000000-0'")
    ms, sep, seq = value.partition("-")
    try:
        ms_i = int(ms)
        seq_i = int(seq) if sep else default_seq
    except ValueError:
        raise ValueError(
            f"invalid message id {value!r}: expected '<milliseconds>-<sequence>'"
        ) from None
    if ms_i < 0 or seq_i < 0 or (sep and not seq) or not ms.isdigit():
        raise ValueError(f"invalid message id {value!r}: expected '<milliseconds>-<sequence>'")
    return ms_i, seq_i


def format_id(key: tuple[int, int]) -> str:
    """Format an ``(ms, seq)`` tuple as ``"<ms>-<seq>"``."""
    return f"{key[0]}-{key[1]}"


def parse_start(start: Position) -> tuple[int, int] | None:
    """Turn a start position into the exclusive ``(ms, seq)`` to read *after*.

    ``"$"`` returns ``None`` (the caller resolves it to the current last id); ``"0"`` (or
    ``"-"``) means from the oldest retained entry; an id means the entries after it, as XREAD;
    a ``datetime`` means the entries stamped at or after it (naive datetimes are UTC).

    Raises:
        ValueError: naming the value when it is none of these.
    """
    if isinstance(start, datetime):
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        ms = int(start.timestamp() * 1000)
        return (ms - 1, MAX_SEQ) if ms > 0 else (0, 0)
    if start == "$":
        return None
    if start in ("0", "-", "0-0"):
        return (0, 0)
    try:
        return parse_id(start)
    except ValueError:
        raise ValueError(
            f"invalid start position {start!r}: use '$' (new messages), '0' (from the "
            "beginning), an id like '1700000000000-0', or a datetime"
        ) from None


class IdClock:
    """Generates strictly increasing ``"<ms>-<seq>"`` ids from the wall clock."""

    __slots__ = ("ms", "seq")

    def __init__(self) -> None:
        self.ms = 0
        self.seq = 0

    def next_keys(self, n: int = 1) -> tuple[int, int]:
        """Reserve ``n`` consecutive ids; return the first ``(ms, seq)`` (the rest follow in
        ``seq``). Never goes backwards, even if the wall clock does."""
        now = time.time_ns() // 1_000_000
        if now > self.ms:
            self.ms, self.seq = now, n - 1
            return now, 0
        first = self.seq + 1
        self.seq += n
        return self.ms, first
