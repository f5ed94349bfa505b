"""The sensor simulator and the real recorded series, on every backend."""

from __future__ import annotations

import pandas as pd
import pytest

import echo_lab as el
from echo_lab.sensors import readings
from tests.helpers import wait_until


def _frame(n: int, **options: object) -> pd.DataFrame:
    return pd.DataFrame([r for _, r in readings(n, **options)])  # type: ignore[arg-type]


def test_readings_are_reproducible_with_a_seed() -> None:
    a = list(readings(500, seed=42, sensors=4))
    assert a == list(readings(500, seed=42, sensors=4))
    assert a != list(readings(500, seed=43, sensors=4))
    assert [t for t, _ in a[:5]] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_readings_look_like_a_home() -> None:
    # one reading per sensor every simulated 2 minutes, over 3 days, no faults
    df = _frame(5 * 30 * 72, sensors=5, rate=10, seed=1, time_scale=1200, faults=False)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    assert set(df.columns) == {
        "sensor",
        "room",
        "time",
        "temp",
        "humidity",
        "co2",
        "occupancy",
    }
    assert df["sensor"].nunique() == 5 and df["room"].nunique() == 5
    hour = df["time"].dt.hour
    # daily cycle: warmer in the late afternoon than before dawn, in every room
    by_room = df.groupby([df["room"], hour.isin([16, 17, 18])])["temp"].mean().unstack()
    night = df[hour.isin([4, 5, 6])].groupby("room")["temp"].mean()
    assert (by_room[True] > night + 1).all()
    # CO2 rises with occupancy; humidity stays physical
    assert df.loc[df["occupancy"] > 0, "co2"].mean() > df.loc[df["occupancy"] == 0, "co2"].mean()
    assert df["co2"].between(300, 2000).all() and df["humidity"].between(5, 100).all()
    assert df.loc[df["room"] == "bathroom", "humidity"].max() > 60  # showers


def test_faults_are_there_and_labelled() -> None:
    df = _frame(20_000, sensors=5, seed=7, labels=True)
    faults = df["fault"].value_counts()
    assert faults["stuck"] > 0 and faults["outlier"] > 0
    assert 0.001 < (faults.sum() / len(df)) < 0.1
    stuck = df[df["fault"] == "stuck"]
    for idx in stuck.index[:20]:  # a stuck reading repeats the sensor's previous values
        prev = df.loc[: idx - 1]
        prev = prev[prev["sensor"] == df.at[idx, "sensor"]].iloc[-1]
        assert (
            prev[["temp", "humidity", "co2"]] == df.loc[idx, ["temp", "humidity", "co2"]]
        ).all()
    per_sensor = df["sensor"].value_counts()
    assert per_sensor.max() - per_sensor.min() > 0  # drop-outs: some readings never came


def test_simulate_publishes_in_the_background(stream: el.Stream, topic: str) -> None:
    cap = stream.capture(topic)
    sim = el.sensors.simulate(stream, topic=topic, sensors=3, rate=200, seed=5, n=60)
    assert sim.wait(20) and sim.sent == 60 and not sim.running
    assert wait_until(lambda: len(cap) == 60, 10)
    df = cap.stop().frame()
    expected = _frame(60, sensors=3, rate=200, seed=5)
    pd.testing.assert_frame_equal(
        df[list(expected.columns)].reset_index(drop=True), expected, check_dtype=False
    )
    assert sim.seed == 5 and "stopped" in repr(sim)


def test_simulate_runs_until_stopped(stream: el.Stream, topic: str) -> None:
    with el.sensors.simulate(stream, topic=topic, rate=50) as sim:
        assert wait_until(lambda: sim.sent >= 5, 10)
        assert sim.running
    assert not sim.running
    sent = sim.sent
    assert len(stream.history(topic)) == sent
    with pytest.raises(ValueError, match="sensors"):
        el.sensors.simulate(stream, topic=topic, sensors=0)


def test_recorded_series_loads_with_one_call() -> None:
    df = el.sensors.load_recorded()
    assert list(df.columns) == ["ts", "sensor", "temp", "temp_f"]
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]"
    assert df["sensor"].value_counts().to_dict() == {"san-francisco": 8759, "seattle": 8759}
    assert df["ts"].is_monotonic_increasing
    seattle = el.sensors.load_recorded("seattle")
    assert seattle["temp_f"].iloc[0] == 39.4 and seattle["temp"].iloc[0] == 4.11
    assert seattle["ts"].iloc[0] == pd.Timestamp("2010-01-01T08:00:00Z")
    assert seattle["temp"].between(-15, 40).all()
    with pytest.raises(ValueError, match="seattle"):
        el.sensors.load_recorded("paris")


def test_recorded_series_replays_into_a_stream(stream: el.Stream, topic: str) -> None:
    day = el.sensors.load_recorded("seattle").head(24)
    cap = stream.capture(topic)
    el.replay(day, stream, topic=topic, speed=None, block=True, progress=False)
    assert wait_until(lambda: len(cap) == 24, 10)
    df = cap.stop().frame()
    assert df["temp_f"].tolist() == day["temp_f"].tolist()
    assert (df["sensor"] == "seattle").all()
