"""The README's "Install and try it" steps, run as a new user would type them.

Run by tests/test_readme_walkthrough.py inside a private network namespace (loopback
up, multicast routed on it, so the mDNS step stays inside), with ``P2PNODE`` the
``p2pnode`` script of a fresh venv installed from the wheel and the working directory
outside the repository. Each step's command is the README's own line, with the
README's placeholders (``12D3KooW...``) replaced by the real values; prints OK per step.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

README = Path(sys.argv[1])
P2PNODE = sys.argv[2]


def blocks() -> list[str]:
    section = README.read_text().split("## Install and try it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def command_lines(block: str) -> list[str]:
    """The commands of a block: its ``$ `` lines when it shows a session, else every line."""
    lines = block.splitlines()
    if any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return [
        line.split("  #")[0].strip()
        for line in lines
        if line.startswith(("p2pnode ", ".venv/bin/p2pnode "))
    ]


def run(line: str, **replace: str) -> str:
    for placeholder, value in replace.items():
        line = line.replace(placeholder, value)
    argv = [P2PNODE, *line.split()[1:]]
    argv = [a.strip('"') for a in argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (line, done.stdout, done.stderr)
    return done.stdout


def main() -> None:
    install, serve_and_ping, send = blocks()[:3]
    (id_line,) = [line for line in command_lines(install) if " id" in line]
    peer_id = run(id_line).strip()
    assert re.fullmatch(r"12D3KooW\w+", peer_id), peer_id
    print("OK id", peer_id)
    serve_line, ping_line = command_lines(serve_and_ping)
    serve = subprocess.Popen([P2PNODE, *serve_line.split()[1:]], stdout=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        header = serve.stdout.readline()
        assert header.startswith(f"p2pnode {peer_id} listening on:"), header
        addr = serve.stdout.readline().strip()
        assert addr == f"{serve_line.split()[-1]}/p2p/{peer_id}", addr
        print("OK serve", addr)
        full = f"{serve_line.split()[-1]}/p2p/12D3KooW..."
        out = run(ping_line, **{full: addr})
        assert f"connected to {peer_id} via /yamux/1.0.0" in out and "5 pings: min" in out, out
        print("OK ping")
        by_addr, by_peer_id = command_lines(send)
        assert run(by_addr, **{full: addr}).strip() == "hello"
        print("OK send-task by address")
        deadline = time.monotonic() + 30  # by the address cache, or mDNS once announced
        while True:
            try:
                assert run(by_peer_id, **{"12D3KooW...": peer_id}).strip() == "hello"
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        print("OK send-task by PeerId")
    finally:
        serve.terminate()
        assert serve.wait(30) == 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
