"""echo_lab: explore publish/subscribe streams from Jupyter notebooks.

>>> import echo_lab as el
>>> stream = el.connect()              # memory:// by default ($ECHO_LAB_URL if set)
>>> stream.publish("sensors", {"temp": 21.5})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .backends import Backend, backend_from_url
from .consumer import Consumer, ConsumerStats, Subscription
from .errors import BackendConnectionError, DecodeError, EchoLabError, EncodeError, GroupError
from .message import Envelope, Message
from .replay import Replay, replay
from .stream import DEFAULT_MAXLEN, Producer, Stream

if TYPE_CHECKING:
    from . import sensors
    from .broker import BrokerHandle
    from .capture import Capture
    from .files import load

__all__ = [
    "Backend",
    "BackendConnectionError",
    "Capture",
    "Consumer",
    "ConsumerStats",
    "DecodeError",
    "EchoLabError",
    "EncodeError",
    "Envelope",
    "GroupError",
    "Message",
    "Producer",
    "Replay",
    "Stream",
    "Subscription",
    "connect",
    "load",
    "replay",
    "sensors",
    "serve",
]

__version__ = "0.1.0"


def connect(
    url: str | None = None, *, codec: str = "json", maxlen: int = DEFAULT_MAXLEN, **options: Any
) -> Stream:
    """Connect to a stream backend and return a :class:`Stream`.

    Args:
        url: ``memory://[NAME]``, ``redis://[:password@]host:port/db``, ``rediss://…``,
            ``ws://host:port[/path]`` or ``wss://…``. Defaults to ``$ECHO_LAB_URL``, else
            ``memory://``.
        codec: ``"json"`` (default) or ``"echo"`` (Crystal Echo's wire format).
        maxlen: entries retained per topic (oldest trimmed first).
        **options: backend options (``token`` for WebSockets, ``cluster``/``prefix`` for Redis).

    Raises:
        ValueError: unknown scheme, malformed URL, unknown option (each named).
        ConnectionError: the server cannot be reached (host and port named).
    """
    url = url or os.environ.get("ECHO_LAB_URL") or "memory://"
    stream = Stream(backend_from_url(url, **options), codec=codec, maxlen=maxlen)
    try:
        stream.runtime.run(stream._connect())
    except BaseException:
        stream.runtime.run(stream.backend.close())
        raise
    return stream


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    redis: str | None = None,
    **options: Any,
) -> BrokerHandle:
    """Run the WebSocket broker in the background; returns a handle (``.url``, ``.stop()``).

    ``redis=URL`` keeps the topics in Redis (several brokers then serve one set of topics);
    otherwise they live in this process's ``memory://``. See :func:`echo_lab.broker.serve`.
    """
    from .broker import serve as _serve

    return _serve(host, port, token, redis, **options)


def __getattr__(name: str) -> Any:
    if name == "Capture":
        from .capture import Capture

        return Capture
    if name == "load":  # the analysis layer imports pandas: only when first used
        from .files import load

        return load
    if name == "sensors":
        import importlib

        return importlib.import_module(".sensors", __name__)
    raise AttributeError(f"module 'echo_lab' has no attribute {name!r}")
