"""A real browser uses the broker: headless Chromium loads the repo's plain-JavaScript page
(served by the broker at ``/``), subscribes with ``new WebSocket(url)``, shows messages a
Python producer publishes, and publishes one back that Python reads."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

import echo_lab as el
from echo_lab.broker import BrokerHandle
from tests.fixtures.browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture
def page() -> Iterator:
    """A page of a fresh headless Chromium (temporary profile and HOME)."""
    with tempfile.TemporaryDirectory(prefix="echo-lab-chromium-") as tmp:
        saved_home = os.environ.get("HOME")
        os.environ["HOME"] = tmp
        try:
            with sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(Path(tmp) / "profile"),
                    executable_path=CHROMIUM,
                    headless=True,
                    args=CHROMIUM_ARGS,
                )
                try:
                    yield context.pages[0] if context.pages else context.new_page()
                finally:
                    context.close()
        finally:
            if saved_home is not None:
                os.environ["HOME"] = saved_home


def test_browser_page_shows_messages_published_from_python(
    page, ws_memory_broker: BrokerHandle, topic: str, tmp_path: Path
) -> None:
    http = ws_memory_broker.url.replace("ws://", "http://")
    with el.connect(ws_memory_broker.url) as stream:
        stream.publish(topic, {"n": 0, "note": "before the page"})  # history: start=0
        page.goto(f"{http}/?topic={topic}&start=0")
        page.wait_for_function(
            "document.getElementById('status').textContent === 'subscribed'", timeout=20_000
        )
        stream.publish_many(topic, [{"n": i, "temp": 20 + i} for i in range(1, 6)])
        page.wait_for_function(
            "document.querySelectorAll('#messages li.message').length === 6", timeout=20_000
        )
        texts = page.locator("#messages li.message .data").all_text_contents()
        assert sorted(texts) == sorted(
            ['{"n":0,"note":"before the page"}']
            + [f'{{"n":{i},"temp":{20 + i}}}' for i in range(1, 6)]
        )
        assert page.locator("#count").text_content() == "6"

        # and the page publishes back: Python reads it
        page.fill("#payload", '{"from": "browser"}')
        page.click("#pub-form button")
        got = stream.take(topic, 7, timeout=10, start="0")
        assert got[-1].data == {"from": "browser"}
        page.wait_for_function(
            "document.querySelectorAll('#messages li.message').length === 7", timeout=20_000
        )
        page.screenshot(path=str(tmp_path / "browser_ws.png"))
