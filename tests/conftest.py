"""Shared fixtures. The conformance suite (tests/conformance/) runs once per entry of
``BACKENDS``; each entry names a fixture (in tests/fixtures/) that yields a fresh URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import echo_lab as el

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.redis",
    "tests.fixtures.broker",
]

#: conformance backend name -> fixture yielding a URL of a fresh, empty namespace.
BACKENDS: dict[str, str] = {
    "memory": "memory_url",
    "redis": "redis_url",
    "ws-memory": "ws_memory_url",
    "ws-redis": "ws_redis_url",
}


@pytest.fixture(autouse=True, scope="session")
def _no_env_url() -> Iterator[None]:
    """Tests choose their backend explicitly; a developer's $ECHO_LAB_URL must not leak in."""
    saved = os.environ.pop("ECHO_LAB_URL", None)
    yield
    if saved is not None:
        os.environ["ECHO_LAB_URL"] = saved


@pytest.fixture
def memory_url() -> str:
    """A fresh in-process namespace."""
    return f"memory://test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=list(BACKENDS))
def backend_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh namespace on each conformance backend in turn."""
    return request.getfixturevalue(BACKENDS[request.param])


@pytest.fixture
def connect(backend_url: str) -> Iterator[Callable[..., el.Stream]]:
    """``connect(**options)`` opens another client of the same backend; all closed at the end."""
    opened: list[el.Stream] = []

    def _connect(**options: Any) -> el.Stream:
        stream = el.connect(backend_url, **options)
        opened.append(stream)
        return stream

    yield _connect
    for stream in opened:
        stream.close()


@pytest.fixture
def stream(connect: Callable[..., el.Stream]) -> el.Stream:
    """A connected stream on the backend under test."""
    return connect()


@pytest.fixture
def topic() -> str:
    """A topic name unique to the test."""
    return f"t-{uuid.uuid4().hex[:8]}"
