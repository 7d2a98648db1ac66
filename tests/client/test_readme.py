"""The README's client example runs as printed against a real service."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(language: str) -> str:
    """The README's `language` block under "API by example"."""
    section = README.read_text().split("## API by example", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, f"expected one {language} block in the API examples"
    return blocks[0]


def test_the_readme_client_example_runs(service):
    code = readme_block("python").replace("http://127.0.0.1:8000", service.url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("IngestResult(accepted=20000, duplicates=0, first_seq=1")
    assert "batches=4" in printed[0]


def test_the_readme_curl_examples_run_in_order_beside_the_demo_twin(service, tmp_path):
    """Every line answers 2xx (the what-if 409 until the twin has learned: no calibrator
    runs here), and the demo's twin is neither touched nor deleted."""
    import shutil
    import subprocess

    import httpx

    if shutil.which("curl") is None:
        import pytest

        pytest.skip("curl is not installed")
    with httpx.Client(base_url=service.url) as http:
        demo = http.post("/twins", json={"name": "demo-heat-exchanger", **DEMO_SPEC}).json()
        script = readme_block("sh").replace("http://127.0.0.1:8000", service.url)
        # each curl also writes "<status> <method> <url>" to stderr
        report = "%{stderr}%{http_code} %{method} %{url_effective}\\n"
        wrapper = f"curl() {{ command curl -w '{report}' \"$@\"; }}\n"
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", wrapper + script],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        calls = [line.split(" ", 2) for line in run.stderr.splitlines() if line[:1].isdigit()]
        assert len(calls) >= 15
        for status, method, url in calls:
            allowed = status.startswith("2") or (status == "409" and url.endswith("/predict"))
            assert allowed, f"{method} {url} answered {status}"
        assert http.get(f"/twins/{demo['id']}").json()["last_seq"] == 0
        assert [t["name"] for t in http.get("/twins").json()] == ["demo-heat-exchanger"]


DEMO_SPEC = {"inputs": ["Q", "T_amb"], "outputs": ["T"], "model": {"kind": "thermal_rc"}}
