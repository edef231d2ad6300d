"""The README's Python example runs as printed."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_api_example_runs() -> None:
    text = README.read_text()
    match = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its Python API example"
    result = subprocess.run(
        [sys.executable, "-c", match.group(1)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rtts, task = result.stdout.splitlines()
    assert len(ast.literal_eval(rtts)) == 3  # a list of three floats, as printed
    assert task.split()[0] == "HELLO"
