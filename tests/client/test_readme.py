"""The README's client example runs as printed against a real service."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, f"expected one {language} block in the README"
    return blocks[0]


def test_the_readme_client_example_runs(service):
    code = readme_block("python").replace("http://127.0.0.1:8000", service.url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("IngestResult(accepted=20000, duplicates=0, first_seq=1")
    assert "batches=4" in printed[0]
