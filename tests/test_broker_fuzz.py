"""Fuzzing the broker's frame parser (hypothesis): whatever a client sends, the parser
returns a validated frame or raises ``FrameError``, and a live broker never crashes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from echo_lab.broker import BrokerHandle, FrameError, parse_frame, serve
from echo_lab.broker.protocol import (
    ERROR_CODES,
    OPS,
    _check_fields,
    _plain_publish,
    plain_publish,
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELD_NAMES = sorted(
    {name for required, optional in OPS.values() for name in [*required, *optional]}
    | {"rid", "op"}
)
# Frames that look right: a known op, known field names, values of any JSON type (often
# of the right type, often not).
plausible = st.builds(
    lambda op, fields: {**fields, "op": op},
    st.sampled_from([*OPS, "nope", ""]) | json_scalars,
    st.dictionaries(
        st.sampled_from(FIELD_NAMES),
        json_values
        | st.text(max_size=30)
        | st.sampled_from(["$", "0", "1-0", "-", "+", "2024-01-01T00:00:00Z"])
        | st.lists(st.text(max_size=10), max_size=3)
        | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
        max_size=8,
    ),
)
frames = (
    plausible.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=200)
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_the_parser_returns_a_valid_frame_or_a_frame_error(data: str | bytes) -> None:
    try:
        frame = parse_frame(data)
    except FrameError as exc:
        assert exc.code in ERROR_CODES and exc.message
        assert json.dumps(exc.frame())  # the error frame itself is valid JSON
    else:
        assert frame["op"] in OPS
        required, optional = OPS[frame["op"]]
        assert all(name in frame for name in [*required, *optional])


texts = st.text(max_size=6)
publishes = st.fixed_dictionaries(
    {"op": st.just("publish")},
    optional={
        "topic": st.none() | st.integers() | st.text(max_size=3) | st.just("x" * 513),
        "fields": st.none()
        | json_values
        | st.dictionaries(texts, texts, max_size=3)
        | st.dictionaries(texts, texts | st.just({"b64": "AAE="}), max_size=2),
        "entries": st.none()
        | json_values
        | st.lists(st.dictionaries(texts, texts | json_values, max_size=2), max_size=3),
        "data": st.none() | json_values,
        "type": st.none() | json_values,
        "headers": st.none() | st.dictionaries(texts, texts, max_size=2),
        "maxlen": st.none() | st.integers() | st.booleans() | st.floats(),
    },
)


@settings(max_examples=500, deadline=None)
@given(publishes)
def test_the_quick_publish_check_agrees_with_the_full_one(frame: dict) -> None:
    quick, full = json.loads(json.dumps(frame)), json.loads(json.dumps(frame))
    if _plain_publish(quick):
        _check_fields("publish", OPS["publish"], full)  # accepted by both, same result
        assert json.dumps(quick, sort_keys=True) == json.dumps(full, sort_keys=True)
    else:
        assert json.dumps(quick) == json.dumps(frame)  # untouched, for the full check


@settings(max_examples=500, deadline=None)
@given(publishes.map(lambda f: json.dumps(f, separators=(",", ":"))) | frames)
def test_the_shortcut_for_publish_frames_agrees_with_the_parser(data: str | bytes) -> None:
    """The broker tries ``plain_publish`` on a text frame's bytes before the parser."""
    if isinstance(data, bytes):
        try:
            text = data.decode()
        except UnicodeDecodeError:  # not a text frame (websockets closes with 1007)
            return
    else:
        text = data
    quick = plain_publish(text.encode(errors="surrogatepass"))
    if quick is not None:  # a shortcut taken gives the parser's own result
        assert json.dumps(quick, sort_keys=True) == json.dumps(parse_frame(text), sort_keys=True)


@pytest.fixture(scope="module")
def fuzz_broker() -> Iterator[BrokerHandle]:
    """One memory-backed broker that every fuzz example talks to."""
    handle = serve(backend="memory://fuzz-broker", max_bad_frames=10**6)
    yield handle
    handle.stop()


def _send_all(url: str, batch: list[str | bytes]) -> None:
    """Send every frame; reconnect whenever the broker closes the connection (by policy)."""
    left = list(batch)
    while left:
        with ws_connect(url, compression=None, open_timeout=30) as ws:
            while left:
                data = left.pop(0)
                try:
                    ws.send(data)
                    reply = json.loads(ws.recv(timeout=0.05))
                    assert reply["op"] in ("ok", "error", "deliver")
                except TimeoutError:
                    pass  # no reply expected (credit, ack without rid, ...)
                except ConnectionClosed as exc:
                    assert exc.rcvd is not None and exc.rcvd.code in (1008, 1009, 4001)
                    break


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(frames, min_size=1, max_size=4))
@example(['{"op": "hello", "sub": []}'])  # found by this test: an unhashable extra "sub"
def test_a_live_broker_survives_anything(fuzz_broker: BrokerHandle, batch: list) -> None:
    _send_all(fuzz_broker.url, batch)
    with ws_connect(fuzz_broker.url, compression=None, open_timeout=30) as ws:
        ws.send(json.dumps({"op": "ping", "rid": 1}))
        assert json.loads(ws.recv(timeout=30)) == {"op": "ok", "rid": 1, "result": "pong"}
    assert fuzz_broker.stats["errors"] == 0  # no internal error, only refusals
