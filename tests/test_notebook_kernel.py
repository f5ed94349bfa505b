"""The sync API in a real Jupyter kernel (a loop is already running there), with background
handlers that keep receiving while a later cell sleeps."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    "import threading, time\nimport echo_lab as el\nstream = el.connect('memory://nb')",
    "got = []\nsub = stream.on('ticks', lambda env: got.append(env.data['n']))",
    # a producer in another thread, publishing while the next cell sleeps
    "def produce():\n    for i in range(40):\n        stream.publish('ticks', {'n': i})\n"
    "        time.sleep(0.02)\nthreading.Thread(target=produce, daemon=True).start()",
    "before = len(got)\ntime.sleep(2.0)\nafter = len(got)\n"
    "assert before < 40 and after == 40, (before, after)\nassert got == list(range(40))",
    # top-level await in a cell: async twins hop from the kernel's loop to the runtime
    "ids = [await stream.apublish('x', {'i': i}) for i in range(3)]\n"
    "assert [e.id for e in await stream.atake('x', 3, timeout=5, start='0')] == ids",
    # a sync call while the kernel's loop is running
    "assert [e.data['i'] for e in stream.take('x', 3, timeout=5, start='0')] == [0, 1, 2]",
    "class Reading(el.Message):\n    sensor: str\n    temp: float\n"
    "class Reading(el.Message):  # re-running a cell replaces the class\n"
    "    sensor: str\n    temp: float\n    unit: str = 'C'\n"
    "stream.publish(Reading('s1', 20.0))\n"
    "assert stream.take('Reading', 1, timeout=5, start='0')[0].data.unit == 'C'",
    "stream.close()\nassert not sub.running",
]


@pytest.fixture
def jupyter_dirs(tmp_path, monkeypatch):
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        path = tmp_path / var.lower()
        path.mkdir()
        monkeypatch.setenv(var, str(path))


def test_sync_api_and_background_handlers_in_a_real_kernel(jupyter_dirs):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    client = NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=False)
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
