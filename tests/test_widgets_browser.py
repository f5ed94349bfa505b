"""The live widgets in a real browser: notebooks/widgets-live.ipynb served by Voilà and by
JupyterLab (light and dark themes), opened in headless Debian Chromium through Playwright.

Each test checks that the widgets rendered (no "Loading widget"), that the monitor's counts
and the plot's lines change while messages flow, and saves PNG screenshots under
``artifacts/`` for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from .fixtures.browser import CHROMIUM, CHROMIUM_ARGS
from .fixtures.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "widgets-live.ipynb"
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture
def jupyter_env(tmp_path: Path) -> dict[str, str]:
    """Environment with every Jupyter/IPython/Chromium folder in ``tmp_path``, and the demo
    notebook copied into ``tmp_path/root``."""
    env = dict(os.environ)
    for var in (
        "JUPYTER_CONFIG_DIR",
        "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR",
        "IPYTHONDIR",
        "HOME",
        "JUPYTERLAB_SETTINGS_DIR",
        "JUPYTERLAB_WORKSPACES_DIR",
    ):
        path = tmp_path / var.lower()
        path.mkdir()
        env[var] = str(path)
    env.pop("ECHO_LAB_URL", None)
    settings = Path(env["JUPYTERLAB_SETTINGS_DIR"])
    for plugin, body in (
        ("@jupyterlab/apputils-extension/notification", '{"fetchNews": "false"}'),
        ("@jupyterlab/docmanager-extension/plugin", '{"autosave": false}'),
        # render every cell, not only those in view (a widget below the fold must exist)
        ("@jupyterlab/notebook-extension/tracker", '{"windowingMode": "none"}'),
    ):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    env["ECHO_TEST_ROOT"] = str(root)
    ARTIFACTS.mkdir(exist_ok=True)
    return env


def _serve(cmd: list[str], env: dict[str, str], ready_url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd,
        cwd=env["ECHO_TEST_ROOT"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(ready_url, timeout=1).close()
            return proc
        except urllib.error.HTTPError:  # it answers (a 403/404 of a path it does not serve)
            return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"{cmd[0]} did not answer {ready_url}: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its kernels down) and wait; SIGKILL its group if stuck."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def browser(jupyter_env: dict[str, str], tmp_path: Path) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile."""
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            env=jupyter_env,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


def _total(page: Page) -> int:
    return int(page.locator(".echo-monitor-total-count").inner_text().replace(",", ""))


def _line(page: Page) -> str:
    return page.locator(".echo-plot-figure path.line").first.get_attribute("d") or ""


def _check_live(page: Page) -> None:
    """The widgets rendered and change while the notebook's producer publishes."""
    page.locator(".echo-monitor-total-count").wait_for(timeout=60_000)
    page.locator(".echo-plot-figure path.line").first.wait_for(timeout=60_000)
    page.locator(".echo-explorer-topics table").wait_for(timeout=60_000)
    assert page.get_by_text("Loading widget").count() == 0
    # the monitor redraws from counters: the total, a topic row and the plot all move
    count, line = _total(page), _line(page)
    sensors = page.locator('.echo-monitor-table tr[data-topic="sensors"] .echo-count')
    sensors_before = sensors.inner_text()
    page.wait_for_timeout(1500)
    assert _total(page) > count
    assert sensors.inner_text() != sensors_before
    assert _line(page) != line
    lines = page.locator(".echo-plot-lines").inner_text()
    assert lines == "4", lines  # one line per sensor
    assert page.locator(".echo-plot-figure path.line").count() >= 4
    # the newest sensor readings, and the consumer of the orders (with its errors)
    assert page.locator(".echo-monitor-newest table tr").count() > 1
    page.locator(".echo-monitor-consumers td", has_text="pack").first.wait_for(timeout=10_000)
    # the explorer lists the group of the orders topic
    page.locator('.echo-explorer-groups tr[data-group="packers"]').wait_for(timeout=10_000)


def _shoot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    for widget in ("monitor", "plot", "explorer"):
        page.locator(f".echo-{widget}").first.screenshot(
            path=str(ARTIFACTS / f"{name}-{widget}.png")
        )


def test_voila_renders_live_monitor_and_plot(
    jupyter_env: dict[str, str], browser: BrowserContext, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = ["voila", NOTEBOOK.name, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    server = _serve(cmd, jupyter_env, url + "voila/static/", tmp_path / "voila.log")
    try:
        page = browser.new_page()
        page.set_viewport_size({"width": 1280, "height": 2000})
        page.goto(url, timeout=60_000)
        _check_live(page)
        # the publish form reaches the kernel's stream: a new topic appears in the table
        topic = f"from-browser-{uuid.uuid4().hex[:4]}"
        page.locator(".echo-monitor-pub-topic input").fill(topic)
        page.locator(".echo-monitor-pub-body input").fill('{"hello": "browser"}')
        page.locator(".echo-monitor-pub-button").click()
        page.locator(".echo-monitor-pub-status", has_text="published").wait_for(timeout=10_000)
        page.locator(f'.echo-monitor-table tr[data-topic="{topic}"]').wait_for(timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "voila.png"), full_page=True)
        page.locator(".echo-monitor").screenshot(path=str(ARTIFACTS / "voila-monitor.png"))
    finally:
        _stop(server)


def test_jupyterlab_light_and_dark(
    jupyter_env: dict[str, str], browser: BrowserContext, tmp_path: Path
) -> None:
    port, token = free_port(), uuid.uuid4().hex
    base = f"http://127.0.0.1:{port}"
    cmd = [
        "jupyter",
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        "--allow-root",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={jupyter_env['ECHO_TEST_ROOT']}",
    ]
    server = _serve(cmd, jupyter_env, f"{base}/api/status?token={token}", tmp_path / "lab.log")
    try:
        page = browser.new_page()
        page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", timeout=60_000)
        # Run All is ignored until the kernel is up: wait for "… | Idle" in the status bar
        page.get_by_text(re.compile(r"\|\s*Idle")).first.wait_for(timeout=60_000)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        _check_live(page)
        page.locator(".echo-monitor").scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        _shoot(page, "jupyterlab-light")

        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Settings$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Theme$")).hover()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^JupyterLab Dark$")).click()
        page.locator('body[data-jp-theme-light="false"]').wait_for(
            state="attached", timeout=20_000
        )
        page.wait_for_timeout(1000)  # the theme's CSS settles
        count = _total(page)
        page.wait_for_timeout(1000)
        assert _total(page) > count  # still live after the theme change
        _shoot(page, "jupyterlab-dark")
    finally:
        _stop(server)
