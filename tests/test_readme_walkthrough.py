"""The README's first steps, as a new user would run them: a wheel, a fresh venv outside
the repository, and each command as printed (tests/walkthrough/readme_steps.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .netns import require_netns

ROOT = Path(__file__).resolve().parent.parent
STEPS = Path(__file__).parent / "walkthrough" / "readme_steps.py"
# the namespace's only interface is loopback: bring it up and route multicast (mDNS) on it
NAMESPACE_SETUP = (
    "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"
)


@pytest.mark.netns
def test_the_readme_walkthrough_works_from_a_wheel(tmp_path: Path) -> None:
    require_netns()
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    # nothing of this checkout on the path: pip would take it for an installed p2pnode
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, timeout=300, env=clean,
    )  # fmt: skip
    (wheel,) = wheels.glob("p2pnode-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=clean)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True, capture_output=True, timeout=600, env=clean,
    )  # fmt: skip
    home = tmp_path / "home"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_RUNTIME_DIR": str(home / "run"),
    }
    home.mkdir()
    script = f'{NAMESPACE_SETUP} && exec "$0" "$@"'
    done = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script, str(venv / "bin" / "python"), str(STEPS),
         str(ROOT / "README.md"), str(venv / "bin" / "p2pnode")],
        capture_output=True, text=True, timeout=300, cwd=home, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "OK send-task by PeerId" in done.stdout
