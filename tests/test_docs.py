"""The Python examples in the README and docs/ run as written, and the example script runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for document in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer(document.read_text())):
            found.append((document.name, number, match.group(1)))
    return found


@pytest.mark.parametrize(("document", "number", "code"), _blocks())
def test_python_block_runs(
    document: str, number: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{document}[{number}]", "exec"), {"__name__": "__doc_example__"})  # noqa: S102


def test_there_are_examples_to_run() -> None:
    assert len(_blocks()) >= 3


def test_basic_example_prints_what_it_did(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "basic.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "replay LSN   0: order 0" in result.stdout
    assert "appended and synced one more at LSN 45" in result.stdout
    assert (tmp_path / "orders.wal").exists()
