"""Typed messages and the envelope every consumer receives."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, ClassVar

__all__ = ["Envelope", "Message", "message_type", "registered_types"]

_REGISTRY: dict[str, type[Message]] = {}


class Message:
    """Base class of typed messages.

    A subclass is turned into a dataclass automatically and registered by its class name,
    so consumers get instances back instead of dicts. Its default topic is the class name;
    set ``topic = "..."`` on the class to override it. Redefining a class (re-running a
    notebook cell) replaces the registration: the last definition wins.

    Example:
        >>> class Reading(Message):
        ...     sensor: str
        ...     temp: float
        >>> Reading("s1", 21.5).topic
        'Reading'
    """

    topic: ClassVar[str]
    type_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__dataclass_fields__" not in cls.__dict__:
            dataclasses.dataclass(cls)
        cls.type_name = cls.__name__
        if "topic" not in cls.__dict__:
            cls.topic = cls.__name__
        elif not isinstance(cls.__dict__["topic"], str) or not cls.__dict__["topic"]:
            raise TypeError(f"{cls.__name__}.topic must be a non-empty string")
        _REGISTRY[cls.type_name] = cls


def message_type(name: str | None) -> type[Message] | None:
    """Return the registered ``Message`` subclass called ``name``, if any."""
    return _REGISTRY.get(name) if name else None


def registered_types() -> dict[str, type[Message]]:
    """Return a copy of the registry of message types, by name."""
    return dict(_REGISTRY)


class Envelope:
    """One delivered message: where it was published, when, and what it carries.

    Attributes:
        topic: the topic it was published to.
        id: its id in the topic's log, ``"<ms>-<seq>"``.
        type: the message type name, or ``None`` for plain dicts.
        data: a ``dict``, or a ``Message`` instance when its type is registered.
        headers: string headers (empty dict when none).
    """

    __slots__ = ("data", "headers", "id", "size", "topic", "type")

    def __init__(
        self,
        topic: str,
        id: str,
        type: str | None,
        data: Any,
        headers: dict[str, str] | None = None,
        size: int = 0,
    ) -> None:
        self.topic = topic
        self.id = id
        self.type = type
        self.data = data
        self.headers = {} if headers is None else headers
        self.size = size

    @property
    def ts(self) -> datetime:
        """Timezone-aware UTC time at which the message was appended (from its id)."""
        ms = int(self.id.partition("-")[0])
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    def to_dict(self) -> dict[str, Any]:
        """Return the data as a plain dict (typed messages are converted)."""
        data = self.data
        if isinstance(data, Message):
            return dataclasses.asdict(data)  # type: ignore[call-overload]
        return dict(data) if isinstance(data, dict) else {"value": data}

    def __repr__(self) -> str:
        return (
            f"Envelope(topic={self.topic!r}, id={self.id!r}, type={self.type!r}, "
            f"data={self.data!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return (self.topic, self.id, self.type, self.data, self.headers) == (
            other.topic,
            other.id,
            other.type,
            other.data,
            other.headers,
        )

    __hash__ = None  # type: ignore[assignment]
