"""The dashboard as a newcomer first sees it: `tandem demo` run as a real process for a minute,
then the fleet page and the demo twin's page in the browser, screenshots written for review
(`demo-fleet.png`, `demo-twin.png` beside the other tests' screenshots)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.dashboard.conftest import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_FOR = 60.0  # seconds of demo before the pages are opened


def test_the_pages_after_a_minute_of_the_demo(tmp_path, page):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", "from app.cli import main; main()", "demo"]
    command += ["--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'demo.db'}"]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = time.monotonic()
        with httpx.Client(base_url=base, timeout=10) as http:
            twin = None
            while twin is None or time.monotonic() - started < RUN_FOR:
                assert demo.poll() is None, demo.stdout.read()
                assert time.monotonic() - started < RUN_FOR + 60, "the demo twin never learned"
                try:
                    twins = http.get("/twins").json()
                except httpx.TransportError:
                    twins = []
                twin = next((t for t in twins if t["version"] > 0), None)
                time.sleep(0.5)
            page.open(f"{base}/")
            assert page.page.locator("#fleet tbody tr").count() == 1
            page.screenshot("demo-fleet.png")

            page.open(f"{base}/ui/twins/{twin['id']}")
            observed = page.page.evaluate("window.tandem.charts['out-T'].data[1]")
            assert sum(v is not None for v in observed) > 50
            r_plot = page.page.evaluate("window.tandem.charts['par-R'].data[1]")
            assert len(r_plot) > 10  # R over many versions, not one point
            page.screenshot("demo-twin.png")
            assert page.errors == [] and page.refused == []
    finally:
        demo.terminate()
        demo.wait(15)
