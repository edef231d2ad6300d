"""The README's agent example runs as written: a streaming handler, a JSON-schema'd kind,
its card, and send-task --any."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from .netns import Process

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> tuple[str, list[str]]:
    text = README.read_text()
    agent = re.search(r"This file is `agent.py`:\n\n```python\n(.*?)```", text, re.S)
    commands = re.search(r"Serve it, read its card.*?\n\n```sh\n(.*?)```", text, re.S)
    assert agent and commands, "the README lost its agent example"
    return agent.group(1), commands.group(1).strip().splitlines()


def test_the_agent_example_runs_as_written(cli_env: dict[str, str], tmp_path: Path) -> None:
    agent, commands = _blocks()
    (tmp_path / "agent.py").write_text(agent)
    env = dict(cli_env, PYTHONPATH=str(tmp_path))
    serve, card, summarize, stats = (shlex.split(c) for c in commands)
    assert serve[:2] == ["p2pnode", "serve"]
    server = Process([sys.executable, "-m", "p2pnode", *serve[1:], "--ephemeral", "--json"], env)
    try:
        server.event("listening")

        def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
            assert argv[0] == "p2pnode"
            done = subprocess.run([sys.executable, "-m", "p2pnode", *argv[1:], "--ephemeral"],
                                  capture_output=True, text=True, env=env, cwd=tmp_path,
                                  timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stderr
            return done

        shown = run(card).stdout
        assert "summarizer" in shown and "summarize (streaming)" in shown
        assert "word and character counts" in shown
        described = json.loads(run([*card, "--json"]).stdout)
        stats_kind = next(k for k in described["kinds"] if k["kind"] == "stats")
        assert stats_kind["input_schema"]["properties"]["text"] == {"type": "string"}
        streamed = run(summarize)
        assert streamed.stdout == "the quick brown fox jumps "
        assert "progress: 0% word 1" in streamed.stderr
        assert run(stats).stdout.strip() == '{"words":6,"chars":18}'
    finally:
        server.stop()
