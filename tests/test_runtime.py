"""The runtime: clean interpreter exit, closing leaves nothing running, threads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import echo_lab as el
from tests.helpers import wait_until


def _run_script(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_interpreter_exits_cleanly_with_running_consumers():
    result = _run_script(
        """
        import time, echo_lab as el
        s = el.connect()
        s.on("t", lambda e: time.sleep(0.001))
        s.on("t", lambda e: None, group="g")
        async def ahandler(e): pass
        s.on("t", ahandler)
        s.publish_many("t", [{"n": i} for i in range(1000)])
        print("done")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr


def test_script_exits_cleanly_after_close():
    result = _run_script(
        """
        import echo_lab as el
        with el.connect() as s:
            sub = s.on("t", print)
            s.publish("t", {"a": 1})
        assert not sub.running
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_close_leaves_no_task_of_the_stream_on_the_loop(memory_url):
    s = el.connect(memory_url)
    subs = [s.on("a", lambda e: None), s.on("b", lambda e: None, group="g")]
    loop = s.runtime.loop

    def names() -> set[str]:
        return {t.get_name() for t in asyncio.all_tasks(loop) if not t.done()}

    assert {"echo-lab:a", "echo-lab:b"} <= names()
    s.close()
    assert not any(sub.running for sub in subs)
    assert wait_until(lambda: not {"echo-lab:a", "echo-lab:b"} & names())
    assert wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("echo-lab-handler")]
    )


def test_sync_calls_from_many_threads_at_once(memory_url):
    s = el.connect(memory_url)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(50):
                s.publish(f"t{k % 3}", {"k": k, "i": i})
            assert len(s.take(f"t{k % 3}", 10, timeout=5, start="0")) == 10
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(s.info(f"t{j}")["length"] for j in range(3)) == 600
    s.close()
