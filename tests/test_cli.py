"""The ``echo-lab`` command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

COMMANDS = ["demo", "serve", "pub", "tail", "capture", "replay", "topics"]


def echo_lab(*args: str, stdin: str | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "echo_lab", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_runs_and_prints_a_summary(tmp_path):
    out = tmp_path / "demo.csv"
    result = echo_lab("demo", "--seconds", "1.5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "captured" in result.stdout and "kitchen" in result.stdout
    assert f"capture written to {out}" in result.stdout
    frame = pd.read_csv(out)
    assert len(frame) > 50 and {"sensor", "room", "temp", "humidity", "co2"} <= set(frame)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    result = echo_lab(command, "--help")
    assert result.returncode == 0 and "--url" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "kafka://x", "topics"], "unknown URL scheme 'kafka'"),
        (["topics", "--url", "localhost:6379"], "malformed stream URL"),
        (["pub", "t", "{not json"], "not valid JSON"),
        (["pub", "t", "[1, 2]"], "must be a JSON object"),
        (["replay", "no-such-file.parquet"], "no such file"),
    ],
)
def test_errors_are_one_clear_line_without_traceback(args, message):
    result = echo_lab(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_server_names_host_and_port():
    result = echo_lab("topics", "--url", "redis://127.0.0.1:1/0", timeout=30)
    assert result.returncode == 2 and "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_pub_tail_capture_replay_and_topics_against_redis(redis_url, tmp_path):
    rows = "\n".join(f'{{"n": {i}, "room": "r{i % 2}"}}' for i in range(5))
    pub = echo_lab("pub", "readings", "--url", redis_url, stdin=rows)
    assert pub.returncode == 0, pub.stderr
    assert len(pub.stdout.split()) == 5

    tail = echo_lab("tail", "readings", "--start", "0", "-n", "5", "--url", redis_url)
    assert tail.returncode == 0, tail.stderr
    assert [line.count('"n":') for line in tail.stdout.splitlines()] == [1] * 5

    out = tmp_path / "cap.jsonl"
    cap = echo_lab(
        "capture",
        "readings",
        "--start",
        "0",
        "-n",
        "5",
        "--seconds",
        "20",
        "--out",
        str(out),
        "--url",
        redis_url,
    )
    assert cap.returncode == 0, cap.stderr
    assert "captured 5 messages" in cap.stdout

    replay = echo_lab("replay", str(out), "--topic", "again", "--speed", "0", "--url", redis_url)
    assert replay.returncode == 0, replay.stderr

    topics = echo_lab("topics", "--url", redis_url)
    assert topics.returncode == 0, topics.stderr
    lines = {line.split()[0]: line.split()[1] for line in topics.stdout.splitlines()[1:]}
    assert lines == {"again": "5", "readings": "5"}
