"""Replay of captures, frames and files into every backend, with the original timing."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest

import echo_lab as el
from tests.helpers import wait_until


class Reading(el.Message):
    sensor: str
    temp: float


def _spaced_frame(n: int, gap_ms: int) -> pd.DataFrame:
    start = pd.Timestamp("2024-01-01T00:00:00Z")
    return pd.DataFrame(
        {
            "ts": [start + pd.Timedelta(milliseconds=gap_ms * i) for i in range(n)],
            "i": range(n),
        }
    )


def test_replay_keeps_inter_arrival_times_scaled(stream: el.Stream, topic: str) -> None:
    """speed=10: the median gap is the original gap / 10, within 10%."""
    source = _spaced_frame(31, gap_ms=500)  # 30 gaps of 500 ms -> 50 ms at speed 10
    cap = stream.capture(topic)
    handle = el.replay(source, stream, topic=topic, speed=10, block=True, progress=False)
    assert handle.sent == 31 and not handle.running
    assert wait_until(lambda: len(cap) == 31, 10)
    df = cap.stop().frame()
    assert df["i"].tolist() == list(range(31))
    gaps_ms = df["ts"].diff().dropna().dt.total_seconds() * 1000
    assert statistics.median(gaps_ms) == pytest.approx(50, rel=0.10)


def test_replay_a_capture_as_fast_as_possible(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic)
    stream.publish(topic, {"sensor": "s1", "temp": 21.5, "room": {"name": "hall", "floor": 0}})
    stream.publish(topic, {"sensor": "s2", "temp": 19.0, "type": "manual"})
    stream.publish(topic, Reading("s3", 18.25))
    assert wait_until(lambda: len(cap) == 3, 10)
    cap.stop()

    dest = topic + "-copy"
    out = stream.capture(dest)
    el.replay(cap, stream, topic=dest, speed=None).wait(10)
    assert wait_until(lambda: len(out) == 3, 10)
    got = [env.data for env in stream.history(dest)]
    assert got[0] == {"sensor": "s1", "temp": 21.5, "room": {"name": "hall", "floor": 0}}
    assert got[1] == {"sensor": "s2", "temp": 19.0, "type": "manual"}  # data.type -> type
    assert got[2] == Reading("s3", 18.25)  # a registered type comes back typed
    src, copy = cap.frame(), out.stop().frame()
    data_cols = [c for c in src.columns if c not in ("id", "ts", "topic")]
    pd.testing.assert_frame_equal(src[data_cols], copy[data_cols])


def test_replay_uses_each_rows_topic_and_files(
    stream: el.Stream, topic: str, tmp_path: Path
) -> None:
    frame = pd.DataFrame(
        {"ts": pd.to_datetime(["2024-01-01", "2024-01-01"], utc=True), "v": [1, 2]}
    )
    frame["topic"] = [topic + "-a", topic + "-b"]
    path = el.Capture.save.__globals__["save_frame"](frame, tmp_path / "two.jsonl")
    el.replay(path, stream, speed=None, block=True, progress=False)
    assert [e.data for e in stream.history(topic + "-a")] == [{"v": 1}]
    assert [e.data for e in stream.history(topic + "-b")] == [{"v": 2}]


def test_replay_runs_in_the_background_and_stops(stream: el.Stream, topic: str) -> None:
    source = _spaced_frame(100, gap_ms=1000)  # 99 s of traffic at speed 1
    handle = el.replay(source, stream, topic=topic)
    assert wait_until(lambda: handle.sent >= 1, 5)
    assert handle.running
    handle.stop()
    assert not handle.running and handle.sent < 100
    assert len(stream.history(topic)) == handle.sent


def test_replay_rejects_what_it_cannot_do(stream: el.Stream, topic: str) -> None:
    frame = pd.DataFrame({"v": [1, 2]})
    with pytest.raises(ValueError, match="topic"):
        el.replay(frame, stream)
    with pytest.raises(ValueError, match="'ts'"):
        el.replay(frame, stream, topic=topic)
    with pytest.raises(ValueError, match="speed"):
        el.replay(_spaced_frame(2, 10), stream, topic=topic, speed=0)
    with pytest.raises(TypeError, match="Capture, a DataFrame or a file"):
        el.replay([1, 2], stream, topic=topic)
    el.replay(frame, stream, topic=topic, speed=None, block=True, progress=False)
    assert [e.data for e in stream.history(topic)] == [{"v": 1}, {"v": 2}]


def test_blocking_replay_shows_progress(
    stream: el.Stream, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = el.replay(
        _spaced_frame(20, gap_ms=10), stream, topic=topic, block=True, progress=True
    )
    assert handle.sent == 20
    err = capsys.readouterr().err
    assert "replay" in err and "20/20" in err
