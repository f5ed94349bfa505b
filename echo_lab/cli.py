"""The ``echo-lab`` command: demo, serve, pub, tail, capture, replay, topics.

Every subcommand takes ``--url`` (default ``$ECHO_LAB_URL``, else ``memory://``). Errors print
one line naming the problem and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

import echo_lab as el

__all__ = ["main"]


class CliError(Exception):
    """A problem to report in one line (exit status 2)."""


def _connect(args: argparse.Namespace, **options: Any) -> el.Stream:
    return el.connect(args.url, **options)


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, default=str).decode() + "\n")
    sys.stdout.flush()


def _envelope_json(env: el.Envelope) -> dict[str, Any]:
    return {
        "topic": env.topic,
        "id": env.id,
        "ts": env.ts.isoformat(),
        "type": env.type,
        "data": env.to_dict(),
        **({"headers": env.headers} if env.headers else {}),
    }


def _parse_json(text: str, what: str) -> Any:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


# -- subcommands ----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Residential sensors on the embedded memory backend, captured and summarised."""
    from tqdm import tqdm

    from . import sensors

    url = args.url or "memory://demo"
    with el.connect(url) as stream:
        cap = stream.capture(args.topic)
        sim = sensors.simulate(
            stream,
            topic=args.topic,
            sensors=args.sensors,
            rate=args.rate,
            seed=args.seed,
            time_scale=args.time_scale,
        )
        steps = max(1, int(args.seconds * 10))
        with tqdm(
            total=steps,
            desc="simulating",
            unit="tick",
            leave=False,
            bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}] {postfix}",
        ) as bar:
            for _ in range(steps):
                time.sleep(0.1)
                bar.set_postfix_str(f"{len(cap):,} msgs, {cap.rate:,.0f} msg/s")
                bar.update()
        sim.stop()
        cap.stop()
        frame = cap.frame()
        out = cap.save(args.out)
    hours = args.seconds * args.time_scale / 3600
    print(
        f"captured {len(frame):,} readings from {args.sensors} sensors on {url} in "
        f"{args.seconds:g} s ({hours:g} simulated hour{'' if hours == 1 else 's'})"
    )
    if len(frame):
        by = "room" if "room" in frame.columns else "sensor"
        numeric = [c for c in ("temp", "humidity", "co2", "occupancy") if c in frame.columns]
        summary = frame.groupby(by)[numeric].agg(["mean", "min", "max"]).round(1)
        summary.insert(0, ("messages", "count"), frame.groupby(by).size())
        print(summary.to_string())
    print(f"capture written to {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the WebSocket broker in the foreground until interrupted."""
    handle = el.serve(host=args.host, port=args.port, token=args.token, redis=args.redis)
    print(f"echo-lab broker listening on {handle.url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()
    return 0


def cmd_pub(args: argparse.Namespace) -> int:
    """Publish one JSON object given on the command line, or JSON lines from stdin."""
    if args.json is not None and args.json != "-":
        rows = [_parse_json(args.json, "the message")]
    else:
        rows = [
            _parse_json(line, f"stdin line {i}")
            for i, line in enumerate(sys.stdin, 1)
            if line.strip()
        ]
    with _connect(args) as stream:
        for id_ in stream.publish_many(args.topic, rows):
            print(id_)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print messages as JSON lines as they arrive."""
    with _connect(args) as stream:
        envelopes = stream.iter(
            args.topic, start=args.start, group=args.group, timeout=args.timeout
        )
        for count, env in enumerate(envelopes, 1):
            _print_json(_envelope_json(env))
            if args.n is not None and count >= args.n:
                break
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """Capture messages to a Parquet, CSV or JSON Lines file."""
    with _connect(args) as stream:
        cap = stream.capture(args.topics, start=args.start, n=args.n, timeout=args.seconds)
        with contextlib.suppress(KeyboardInterrupt):
            cap.wait()
        cap.stop()
        out = cap.save(args.out)
    print(f"captured {len(cap):,} messages to {out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-publish a saved capture, keeping its timing scaled by --speed."""
    if not Path(args.file).exists():
        raise CliError(f"no such file: {args.file}")
    with _connect(args) as stream:
        speed = None if args.speed == 0 else args.speed
        job = el.replay(args.file, stream, topic=args.topic, speed=speed, block=True)
    print(f"replayed {job.sent:,} messages")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    """List topics with their length, first and last ids and groups."""
    with _connect(args) as stream:
        rows = [stream.info(t) for t in stream.topics()]
    if not rows:
        print("no topics")
        return 0
    width = max(len(r["topic"]) for r in rows)
    print(f"{'topic':<{width}}  {'length':>8}  {'first id':<20}  {'last id':<20}  groups")
    for r in rows:
        print(
            f"{r['topic']:<{width}}  {r['length']:>8}  {r['first_id'] or '-':<20}  "
            f"{r['last_id'] or '-':<20}  {r['groups']}"
        )
    return 0


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one subparser per command, each with --help)."""
    common = argparse.ArgumentParser(add_help=False)
    url_help = "stream URL (default: $ECHO_LAB_URL, else memory://)"
    common.add_argument("--url", default=argparse.SUPPRESS, help=url_help)
    parser = argparse.ArgumentParser(prog="echo-lab", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help=url_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", parents=[common], help="sensor demo on the memory backend")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to simulate (5)")
    p.add_argument("--sensors", type=int, default=6, help="number of sensors (6)")
    p.add_argument("--rate", type=float, default=200.0, help="readings/s, all sensors (200)")
    p.add_argument("--time-scale", type=float, default=720.0, help="simulated s per real s (720)")
    p.add_argument("--topic", default="sensors", help="topic to publish to (sensors)")
    p.add_argument("--seed", type=int, default=7, help="random seed (7)")
    p.add_argument(
        "--out",
        default="echo-lab-demo.parquet",
        help="capture file: .parquet, .csv or .jsonl (echo-lab-demo.parquet)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", parents=[common], help="run the WebSocket broker")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (8765)")
    p.add_argument("--token", default=None, help="require this token from clients")
    p.add_argument("--redis", default=None, help="keep the logs in this Redis (URL)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("pub", parents=[common], help="publish JSON messages")
    p.add_argument("topic")
    p.add_argument("json", nargs="?", help="a JSON object (default: JSON lines from stdin)")
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser("tail", parents=[common], help="print messages as they arrive")
    p.add_argument("topic")
    p.add_argument("--start", default="$", help="'$' (new), '0' (all), an id (default $)")
    p.add_argument("--group", default=None, help="consume as a member of this group")
    p.add_argument("-n", type=int, default=None, help="stop after N messages")
    p.add_argument("--timeout", type=float, default=None, help="stop after N s idle")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("capture", parents=[common], help="capture messages to a file")
    p.add_argument("topics", nargs="+")
    p.add_argument("--out", required=True, help="file: .parquet, .csv or .jsonl")
    p.add_argument("--start", default="$", help="'$' (new), '0' (all), an id (default $)")
    p.add_argument("-n", type=int, default=None, help="stop after N messages")
    p.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("replay", parents=[common], help="re-publish a capture file")
    p.add_argument("file")
    p.add_argument("--topic", default=None, help="publish everything to this topic")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="time scale (2 = twice as fast; 0 = as fast as possible)",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("topics", parents=[common], help="list topics")
    p.set_defaults(func=cmd_topics)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``echo-lab``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ValueError, TypeError, ConnectionError, OSError, el.EchoLabError) as exc:
        print(f"echo-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
