"""Stream backends and the URL-scheme factory that picks one."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from .base import Backend, Cursor, GroupCursor

__all__ = ["SCHEMES", "Backend", "Cursor", "GroupCursor", "backend_from_url"]

#: URL scheme -> "module:class" (imported on first use, so memory:// needs no Redis client).
SCHEMES: dict[str, str] = {
    "memory": "echo_lab.backends.memory:MemoryBackend",
    "redis": "echo_lab.backends.redis:RedisBackend",
    "rediss": "echo_lab.backends.redis:RedisBackend",
    "ws": "echo_lab.backends.websocket:WebSocketBackend",
    "wss": "echo_lab.backends.websocket:WebSocketBackend",
}


def backend_class(url: str) -> type[Backend]:
    """Return the backend class serving ``url``'s scheme.

    Raises:
        ValueError: for a URL without a known scheme (naming the URL and the schemes).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"malformed stream URL {url!r}: expected SCHEME://..., with SCHEME one of "
            f"{', '.join(SCHEMES)}"
        )
    scheme = urlsplit(url).scheme.lower()
    target = SCHEMES.get(scheme)
    if target is None:
        raise ValueError(
            f"unknown URL scheme {scheme!r} in {url!r}: use one of {', '.join(SCHEMES)}"
        )
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def backend_from_url(url: str, **options: Any) -> Backend:
    """Build (but do not connect) the backend for ``url`` with backend-specific options."""
    return backend_class(url).from_url(url, **options)
