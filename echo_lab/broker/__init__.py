"""The echo_lab WebSocket broker: any backend (memory, Redis) served to WebSocket clients.

>>> import echo_lab as el
>>> handle = el.serve()                 # doctest: +SKIP
>>> stream = el.connect(handle.url)     # doctest: +SKIP

The protocol is documented in ``docs/protocol.md``; a plain-JavaScript client page is in
``echo_lab/broker/static/index.html``.
"""

from __future__ import annotations

from .protocol import PROTOCOL_VERSION, FrameError, parse_frame
from .server import DEFAULT_LIMITS, Broker, BrokerHandle, add_arguments, main, run_from_args, serve

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "Broker",
    "BrokerHandle",
    "FrameError",
    "add_arguments",
    "main",
    "parse_frame",
    "run_from_args",
    "serve",
]
