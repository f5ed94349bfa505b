"""Capture, history frames, groups/pending frames and save/load, on every backend."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

import echo_lab as el
from echo_lab.files import save_frame
from echo_lab.frames import groups_frame, pending_frame
from tests.helpers import wait_until


class Reading(el.Message):
    sensor: str
    temp: float


def _captured(cap: el.Capture, n: int, timeout: float = 10.0) -> None:
    assert wait_until(lambda: len(cap) >= n, timeout), f"captured {len(cap)} of {n}"


def test_frame_is_tidy_with_mixed_schemas(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic)
    stream.publish(topic, {"sensor": "s1", "temp": 21, "room": {"name": "kitchen", "floor": 1}})
    stream.publish(topic, {"sensor": "s2", "temp": 19.5, "humidity": 40})
    stream.publish(topic, {"sensor": "s3", "ok": True, "type": "legacy"})
    _captured(cap, 3)
    df = cap.stop().frame()

    assert list(df.columns[:4]) == ["id", "ts", "topic", "type"]
    assert set(df.columns[4:]) == {
        "sensor",
        "temp",
        "room.name",
        "room.floor",
        "humidity",
        "ok",
        "data.type",
    }
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]"
    assert pd.api.types.is_float_dtype(df["temp"]) and df["temp"].tolist()[:2] == [21.0, 19.5]
    assert pd.isna(df["temp"].iloc[2]) and pd.isna(df["humidity"].iloc[0])
    assert df["room.name"].iloc[0] == "kitchen" and df["room.floor"].iloc[0] == 1
    assert df["data.type"].iloc[2] == "legacy" and df["type"].isna().all()
    assert (df["topic"] == topic).all()
    assert df["id"].is_unique and df["ts"].is_monotonic_increasing
    now = pd.Timestamp.now(tz="UTC")
    assert (now - df["ts"]).abs().max() < pd.Timedelta(minutes=1)


def test_typed_messages_get_their_fields_as_columns(stream: el.Stream) -> None:
    topic = Reading.topic
    stream.delete(topic)
    cap = stream.capture(topic)
    stream.publish(Reading("s1", 21.5))
    stream.publish(Reading("s2", 22.0))
    _captured(cap, 2)
    df = cap.stop().frame()
    assert df["type"].tolist() == ["Reading", "Reading"]
    assert df["sensor"].tolist() == ["s1", "s2"] and df["temp"].tolist() == [21.5, 22.0]


def test_start_positions_and_several_topics(stream: el.Stream, topic: str) -> None:
    other = topic + "-b"
    stream.publish(topic, {"n": 0})
    new_only = stream.capture([topic, other])
    everything = stream.capture([topic, other], start="0")
    stream.publish(topic, {"n": 1})
    stream.publish(other, {"m": 2})
    _captured(new_only, 2)
    _captured(everything, 3)
    new_only.stop()
    everything.stop()
    assert sorted(new_only.frame()["topic"]) == sorted([topic, other])
    df = everything.frame()
    assert df.loc[df["topic"] == topic, "n"].tolist() == [0, 1]
    assert df.loc[df["topic"] == other, "m"].tolist() == [2]


def test_stops_by_itself_after_n_or_timeout(stream: el.Stream, topic: str) -> None:
    stream.publish_many(topic, [{"i": i} for i in range(50)])
    cap = stream.capture(topic, start="0", n=20)
    assert cap.wait(10)
    assert not cap.running and len(cap) == 20 and cap.count == 20
    assert cap.frame()["i"].tolist() == list(range(20))

    idle = stream.capture(topic, timeout=0.3)
    assert idle.wait(10) and len(idle) == 0
    assert list(idle.frame().columns) == ["id", "ts", "topic", "type"]


def test_context_manager_counters_and_rate(stream: el.Stream, topic: str) -> None:
    with stream.capture(topic) as cap:
        stream.publish_many(topic, [{"i": i} for i in range(100)])
        _captured(cap, 100)
        assert cap.running
    assert not cap.running
    assert len(cap) == 100 and cap.rate > 0
    assert "rows=100" in repr(cap)
    stream.publish(topic, {"i": 100})
    assert len(cap) == 100  # stopped: nothing more is recorded


def test_max_rows_keeps_the_newest_rows(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic, max_rows=100)
    for start in range(0, 3000, 500):
        stream.publish_many(topic, [{"i": i} for i in range(start, start + 500)])
    assert wait_until(lambda: cap.count == 3000, 20)
    cap.stop()
    assert len(cap) == 100
    assert cap.frame()["i"].tolist() == list(range(2900, 3000))
    assert sum(len(s.chunks) for s in cap._segments) <= 3000 // 100  # memory stays bounded
    assert 0 < cap.memory_usage() < 100 * 3000


def test_since_and_tail_read_new_rows_cheaply(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic)
    stream.publish_many(topic, [{"i": i} for i in range(10)])
    _captured(cap, 10)
    first = cap.since(0)
    seen = first.attrs["next_row"]
    assert seen == 10 and cap.since(seen).empty
    stream.publish_many(topic, [{"i": i} for i in range(10, 15)])
    _captured(cap, 15)
    new = cap.since(seen)
    assert new["i"].tolist() == [10, 11, 12, 13, 14] and new.attrs["next_row"] == 15
    assert cap.tail(3)["i"].tolist() == [12, 13, 14]
    assert cap.since(0)["i"].tolist() == list(range(15))
    cap.stop()


def test_big_capture_spans_background_segments(stream: el.Stream, topic: str) -> None:
    rows = [{"i": i, "x": i / 2, "s": f"v{i % 7}"} for i in range(20_000)]
    rows[15_000]["late"] = "field"  # a field that appears only in a later segment
    cap = stream.capture(topic, max_rows=16_384)
    for start in range(0, len(rows), 2_000):
        stream.publish_many(topic, rows[start : start + 2_000])
    assert wait_until(lambda: cap.count == len(rows), 30)
    full = [s for s in cap._segments if s.full]
    assert full  # parsed in the background, chunks released
    assert wait_until(lambda: all(s.parsed is not None and not s.chunks for s in full), 10)
    cap.stop()
    df = cap.frame()
    assert len(df) == 16_384 and df["i"].tolist() == list(range(20_000 - 16_384, 20_000))
    assert df["x"].iloc[-1] == 19_999 / 2 and df["late"].notna().sum() == 1
    assert cap.since(19_990)["i"].tolist() == list(range(19_990, 20_000))


def test_conflicting_field_types_fall_back_to_objects(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic)
    stream.publish(topic, {"v": 1})
    stream.publish(topic, {"v": "one"})
    _captured(cap, 2)
    df = cap.stop().frame()
    assert df["v"].tolist() == [1, "one"]


def test_foreign_entries_do_not_block_the_capture(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic)
    append = stream.backend.append
    stream.runtime.run(append(topic, [{"temp": b"21.5", "sensor": b"x"}], stream.maxlen))
    stream.publish(topic, {"temp": 22.5})
    pretty = b'{\n  "temp": 23.5,\n  "sensor": "y"\n}'  # JSON written over several lines
    stream.runtime.run(append(topic, [{"data": pretty}, {"data": b"{not json"}], stream.maxlen))
    stream.publish(topic, {"temp": 24.5})
    _captured(cap, 5)
    df = cap.stop().frame()
    assert len(df) == 5
    assert df["temp"].tolist()[1:3] == [22.5, 23.5] and df["sensor"].tolist()[2] == "y"
    assert str(df["temp"].iloc[0]) == "21.5" and df["temp"].iloc[4] == 24.5
    assert pd.isna(df["temp"].iloc[3])  # the undecodable entry is an empty row


def test_stream_frame_is_the_retained_history(stream: el.Stream, topic: str) -> None:
    ids = stream.publish_many(topic, [{"i": i, "nested": {"a": i}} for i in range(5)])
    df = stream.frame(topic)
    assert df["id"].tolist() == ids
    assert df["nested.a"].tolist() == list(range(5))
    assert stream.frame(topic, start=ids[1], end=ids[3])["i"].tolist() == [1, 2, 3]
    assert stream.frame(topic, count=2)["i"].tolist() == [0, 1]
    assert list(stream.frame(topic + "-none").columns) == ["id", "ts", "topic", "type"]


def test_groups_and_pending_as_frames(stream: el.Stream, topic: str) -> None:
    stream.publish_many(topic, [{"i": i} for i in range(3)])
    failed = threading.Event()

    def always_fails(env: el.Envelope) -> None:
        failed.set()
        raise RuntimeError("boom")

    sub = stream.on(topic, always_fails, group="workers", start="0", claim_idle=60)
    assert wait_until(lambda: sub.stats.errors >= 3, 10)
    groups = groups_frame(stream, topic)
    assert list(groups.columns) == ["name", "consumers", "pending", "last_delivered_id", "lag"]
    row = groups.set_index("name").loc["workers"]
    assert row["consumers"] >= 1 and row["pending"] == 3
    pending = pending_frame(stream, topic, "workers")
    assert list(pending.columns) == ["id", "ts", "consumer", "idle", "deliveries"]
    assert len(pending) == 3 and (pending["consumer"] == sub.consumer).all()
    assert (pending["deliveries"] >= 1).all() and (pending["idle"] >= 0).all()
    assert str(pending["ts"].dtype) == "datetime64[ns, UTC]"
    sub.stop()
    assert groups_frame(stream, topic + "-none").empty


def _sample_capture(stream: el.Stream, topic: str) -> el.Capture:
    cap = stream.capture(topic)
    stream.publish(topic, {"sensor": "s1", "temp": 21.25, "n": 3, "room": {"name": "hall"}})
    stream.publish(topic, {"sensor": "s2", "temp": 0.1 + 0.2, "n": 4, "note": 'a, "quoted"'})
    stream.publish(topic, {"sensor": "s3", "temp": -1e-7, "n": 5, "ok": True})
    stream.publish(topic, Reading("s4", 19.75))
    _captured(cap, 4)
    return cap.stop()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_save_load_round_trip_is_exact(
    stream: el.Stream, topic: str, tmp_path: Path, suffix: str
) -> None:
    cap = _sample_capture(stream, topic)
    df = cap.frame()
    path = cap.save(tmp_path / f"cap{suffix}")
    assert path.exists()
    back = el.load(path)
    assert_frame_equal(back, df)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_round_trip_keeps_microseconds_utc(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(
        {
            "id": pd.Series(["1-0", "2-0"], dtype="str"),
            "ts": pd.Series(
                [datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC), datetime(2024, 3, 1)],
                dtype="datetime64[ns, UTC]",
            ),
            "topic": pd.Series(["a", "b"], dtype="str"),
            "type": pd.Series([None, "Reading"], dtype="str"),
            "temp": [1.5, float("nan")],
            "count": [1, 2],
        }
    )
    back = el.load(save_frame(df, tmp_path / f"f{suffix}"))
    assert_frame_equal(back, df)
    assert back["ts"].iloc[0].microsecond == 123456


def test_unknown_suffix_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.xlsx"):
        save_frame(pd.DataFrame({"a": [1]}), tmp_path / "f.xlsx")


def test_closing_the_stream_stops_its_captures(connect: Callable[..., el.Stream]) -> None:
    stream = connect()
    cap = stream.capture(["a", "b"])
    sim = el.sensors.simulate(stream, topic="a", rate=100)
    assert wait_until(lambda: len(cap) > 0, 10)
    sim.stop()
    stream.close()
    assert not cap.running
    assert len(cap.frame()) == len(cap)


def test_import_echo_lab_stays_light() -> None:
    code = (
        "import sys, echo_lab as el\n"
        "assert callable(el.replay) and el.Replay\n"
        "assert 'pandas' not in sys.modules and 'pyarrow' not in sys.modules\n"
        "assert el.load.__module__ == 'echo_lab.files' and el.sensors.simulate\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_capture_from_an_id_or_a_datetime(stream: el.Stream, topic: str) -> None:
    ids = stream.publish_many(topic, [{"i": i} for i in range(3)])
    after_first = stream.capture(topic, start=ids[0], n=2)
    since_epoch = stream.capture(topic, start=datetime(2000, 1, 1, tzinfo=UTC), n=3)
    assert after_first.wait(10) and since_epoch.wait(10)
    assert after_first.frame()["i"].tolist() == [1, 2]
    assert since_epoch.frame()["id"].tolist() == ids
    with pytest.raises(ValueError, match="start"):
        stream.capture(topic, start="yesterday")
    with pytest.raises(ValueError, match="max_rows"):
        stream.capture(topic, max_rows=0)
