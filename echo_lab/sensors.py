"""Sensor data to teach with: a residential sensor simulator and real recorded series.

:func:`simulate` publishes readings of ``sensors`` room sensors to a topic in the background:
daily temperature cycles per room, humidity that falls as rooms warm (and jumps when someone
showers), CO2 that rises with occupancy and decays when people leave, measurement noise,
and the faults real sensors have: stuck readings, sensors that drop out for a while, and
outliers. The same ``seed`` gives the same readings (see :func:`readings`).

:func:`load_recorded` loads the real hourly temperature series shipped in ``data/``
(NOAA via the vega_datasets package; see ``data/README.md``) for analysis or replay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .timed import TimedPublisher

if TYPE_CHECKING:
    import pandas as pd

    from .stream import Stream

__all__ = ["ROOMS", "Simulator", "load_recorded", "readings", "recorded_path", "simulate"]

#: Rooms given to the sensors in turn: (name, mean °C, daily amplitude °C, occupied hours).
ROOMS: tuple[tuple[str, float, float, tuple[tuple[int, int], ...]], ...] = (
    ("living room", 21.0, 1.5, ((7, 9), (17, 23))),
    ("kitchen", 20.5, 2.0, ((7, 8), (12, 13), (18, 20))),
    ("bedroom", 18.5, 1.2, ((0, 7), (22, 24))),
    ("bathroom", 22.0, 1.0, ((7, 8), (21, 22))),
    ("office", 20.0, 2.5, ((9, 12), (13, 17))),
    ("nursery", 20.5, 1.0, ((0, 7), (13, 15), (19, 24))),
    ("hall", 17.5, 1.8, ((8, 9), (17, 18))),
    ("basement", 15.0, 0.6, ()),
)

_OUTDOOR_CO2 = 420.0
_CO2_PER_PERSON = 380.0  # ppm the equilibrium rises per occupant
_CO2_TAU = 1800.0  # s: time constant of a room's air exchange


@dataclass
class _Sensor:
    """State of one simulated sensor between readings."""

    name: str
    room: str
    mean: float
    amplitude: float
    busy: tuple[tuple[int, int], ...]
    offset: float  # calibration offset (°C)
    co2: float = _OUTDOOR_CO2
    last_t: float | None = None
    stuck: int = 0  # readings left stuck
    dropped: int = 0  # readings left without messages
    last: dict[str, Any] = field(default_factory=dict)


def _occupants(sensor: _Sensor, hour: float, rng: random.Random) -> int:
    for start, end in sensor.busy:
        if start <= hour < end:
            return 1 + (rng.random() < 0.4) + (rng.random() < 0.15)
    return 0


def readings(
    n: int | None = None,
    *,
    sensors: int = 5,
    rate: float = 10.0,
    seed: int = 0,
    start: datetime | None = None,
    time_scale: float = 1.0,
    faults: bool = True,
    labels: bool = False,
) -> Iterator[tuple[float, dict[str, Any]]]:
    """The simulator's readings, deterministic for a given ``seed``.

    Args:
        n: how many readings to yield (``None``: endless).
        sensors: number of sensors (rooms are assigned in turn from :data:`ROOMS`).
        rate: readings per second, all sensors together (they report in turn).
        seed: random seed; the same seed and arguments give the same readings.
        start: simulated start time (default: 2026-01-05 00:00 UTC, a Monday).
        time_scale: simulated seconds per real second (60: a day passes in 24 minutes).
        faults: include stuck sensors, drop-outs and outliers.
        labels: add a ``fault`` field (``"stuck"``, ``"outlier"`` or absent), the ground truth
            for anomaly-detection exercises.

    Yields:
        ``(t, reading)``: ``t`` is the real time in seconds since the start at which the
        reading is due; ``reading`` is a dict with ``sensor``, ``room``, ``time`` (simulated,
        ISO 8601), ``temp`` (°C), ``humidity`` (%), ``co2`` (ppm) and ``occupancy``.
    """
    if sensors < 1:
        raise ValueError(f"sensors must be >= 1, got {sensors!r}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
    rng = random.Random(seed)
    t_start = start or datetime(2026, 1, 5, tzinfo=UTC)
    if t_start.tzinfo is None:
        t_start = t_start.replace(tzinfo=UTC)
    state = []
    for i in range(sensors):
        room, mean, amplitude, busy = ROOMS[i % len(ROOMS)]
        if i >= len(ROOMS):
            room = f"{room} {i // len(ROOMS) + 1}"
        state.append(_Sensor(f"s{i + 1}", room, mean, amplitude, busy, offset=rng.gauss(0, 0.3)))
    emitted = 0
    k = 0
    while n is None or emitted < n:
        sensor = state[k % sensors]
        t_real = k / rate
        k += 1
        sim_t = t_real * time_scale
        now = t_start + timedelta(seconds=sim_t)
        hour = now.hour + now.minute / 60 + now.second / 3600
        # occupancy and CO2 (first-order approach to an equilibrium set by the occupants)
        people = _occupants(sensor, hour, rng)
        dt = 0.0 if sensor.last_t is None else sim_t - sensor.last_t
        sensor.last_t = sim_t
        target = _OUTDOOR_CO2 + people * _CO2_PER_PERSON
        sensor.co2 = target + (sensor.co2 - target) * math.exp(-dt / _CO2_TAU)
        # temperature: coldest around 05:00, warmest around 17:00; people warm a room
        cycle = -math.cos((hour - 5.0) / 24.0 * 2 * math.pi)
        temp = sensor.mean + sensor.offset + sensor.amplitude * cycle + 0.3 * people
        temp += rng.gauss(0, 0.08)
        humidity = 48.0 - 1.8 * (temp - 20.0) + rng.gauss(0, 0.6)
        if sensor.room.startswith("bathroom") and people:
            humidity += 25.0
        reading: dict[str, Any] = {
            "sensor": sensor.name,
            "room": sensor.room,
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "temp": round(temp, 2),
            "humidity": round(min(max(humidity, 5.0), 100.0), 1),
            "co2": round(sensor.co2 + rng.gauss(0, 8)),
            "occupancy": people,
        }
        fault = None
        if faults:
            if sensor.dropped:
                sensor.dropped -= 1
                continue
            if sensor.stuck:
                sensor.stuck -= 1
                reading.update(
                    {key: sensor.last[key] for key in ("temp", "humidity", "co2") if sensor.last}
                )
                fault = "stuck"
            else:
                roll = rng.random()
                if roll < 0.001:  # a drop-out: this and the next readings never arrive
                    sensor.dropped = rng.randint(5, 60)
                    continue
                if roll < 0.0015:  # stuck: the next readings repeat this one
                    sensor.stuck = rng.randint(5, 40)
                elif roll < 0.0065:  # an outlier
                    which = rng.choice(("temp", "humidity", "co2"))
                    if which == "temp":
                        reading["temp"] = round(temp + rng.choice((-1, 1)) * rng.uniform(8, 25), 2)
                    elif which == "humidity":
                        reading["humidity"] = rng.choice((0.0, 100.0))
                    else:
                        reading["co2"] = round(rng.uniform(3000, 6000))
                    fault = "outlier"
            if fault != "outlier":
                sensor.last = reading
        if labels and fault is not None:
            reading = {**reading, "fault": fault}
        emitted += 1
        yield t_real, reading


class Simulator(TimedPublisher):
    """A running simulator (returned by :func:`simulate`): ``stop()``, ``wait()``, ``sent``.

    Attributes:
        topic: where it publishes.
        seed: its random seed (pass it again to get the same readings).
    """

    def __init__(
        self, stream: Stream, topic: str, n: int | None, seed: int, **options: Any
    ) -> None:
        self.topic = topic
        self.seed = seed
        self.n = n
        timed = ((offset, topic, row) for offset, row in readings(n, seed=seed, **options))
        super().__init__(stream, timed, n)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Simulator {self.topic!r} {state} sent={self.sent} seed={self.seed}>"


def simulate(
    stream: Stream,
    topic: str = "sensors",
    sensors: int = 5,
    rate: float = 10.0,
    seed: int | None = None,
    *,
    n: int | None = None,
    time_scale: float = 1.0,
    start: datetime | None = None,
    faults: bool = True,
    labels: bool = False,
) -> Simulator:
    """Publish simulated residential sensor readings to ``topic`` in the background.

    Args:
        stream: where to publish (any backend).
        topic: the topic.
        sensors: how many sensors (one per room: living room, kitchen, bedroom, …).
        rate: readings per second, all sensors together.
        seed: random seed (default: a random one, kept in ``Simulator.seed``).
        n: stop after this many readings (default: run until stopped).
        time_scale: simulated seconds per real second (60 shows a day in 24 minutes).
        start: simulated start time (default 2026-01-05 00:00 UTC).
        faults: include stuck sensors, drop-outs and outliers.
        labels: add the ground truth ``fault`` field to faulty readings.

    Returns:
        A :class:`Simulator` (``stop()``, ``wait()``, ``sent``, ``seed``).

    Example:
        >>> sim = el.sensors.simulate(stream, rate=20, seed=1)  # doctest: +SKIP
        >>> cap = stream.capture("sensors"); ...; sim.stop()  # doctest: +SKIP
    """
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    # validate now, in the caller's thread, rather than in the background task
    next(readings(1, sensors=sensors, rate=rate, seed=seed, time_scale=time_scale, start=start))
    return Simulator(
        stream,
        topic,
        n,
        seed,
        sensors=sensors,
        rate=rate,
        time_scale=time_scale,
        start=start,
        faults=faults,
        labels=labels,
    )


# -- real recorded data ------------------------------------------------------------------------
_RECORDED = {"seattle": "seattle-temps.csv", "san-francisco": "sf-temps.csv"}
_DATA_DIRS = (Path(__file__).resolve().parent.parent / "data", Path.cwd() / "data")


def recorded_path(name: str = "seattle") -> Path:
    """Path of a recorded series in ``data/`` (``"seattle"`` or ``"san-francisco"``).

    Raises:
        ValueError: for an unknown name. FileNotFoundError: if ``data/`` is not found.
    """
    try:
        filename = _RECORDED[name]
    except KeyError:
        raise ValueError(
            f"unknown recorded series {name!r}: choose one of {sorted(_RECORDED)}"
        ) from None
    for folder in _DATA_DIRS:
        if (folder / filename).is_file():
            return folder / filename
    raise FileNotFoundError(
        f"{filename} not found in {', '.join(str(d) for d in _DATA_DIRS)} (it ships in the "
        "data/ folder of the echo_lab repository)"
    )


def load_recorded(name: str = "all") -> pd.DataFrame:
    """Load real hourly temperatures of 2010 (NOAA, via vega_datasets; see data/README.md).

    Args:
        name: ``"seattle"``, ``"san-francisco"`` or ``"all"`` (both, sorted by time).

    Returns:
        Columns ``ts`` (``datetime64[ns, UTC]``; the source's local clock read as UTC-8),
        ``sensor`` (the city), ``temp`` (°C, 2 decimals) and ``temp_f`` (°F, as recorded).
        Replay it with ``el.replay(df, stream, topic="weather", speed=3600)``.
    """
    import pandas as pd

    names = sorted(_RECORDED) if name == "all" else [name]
    frames = []
    for city in names:
        raw = pd.read_csv(recorded_path(city))
        local = pd.to_datetime(raw["date"], format="mixed")
        ts = (local + pd.Timedelta(hours=8)).dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
        frames.append(
            pd.DataFrame(
                {
                    "ts": ts,
                    "sensor": pd.Series(city, index=raw.index, dtype="str"),
                    "temp": ((raw["temp"] - 32) * 5 / 9).round(2),
                    "temp_f": raw["temp"].astype("float64"),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["ts", "sensor"], kind="stable", ignore_index=True)
