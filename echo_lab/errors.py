"""Exceptions raised by echo_lab (all subclass a built-in, so ``except ValueError`` works)."""

from __future__ import annotations


class EchoLabError(Exception):
    """Base class of every echo_lab-specific error."""


class EncodeError(EchoLabError, TypeError):
    """A message could not be serialised (it names the topic and the offending value)."""


class DecodeError(EchoLabError, ValueError):
    """A stored entry could not be decoded into an envelope."""


class BackendConnectionError(EchoLabError, ConnectionError):
    """The backend server could not be reached (the message names host and port)."""


class GroupError(EchoLabError, RuntimeError):
    """A consumer group vanished or cannot be used (for example the topic was deleted)."""
