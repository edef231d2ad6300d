"""`make demo`'s fallback: in a fresh user+network namespace (``unshare -rn``), where
network namespaces cannot be made and loopback starts down, the demo still runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def test_the_demo_runs_under_unshare_rn_over_loopback() -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        if os.environ.get("P2PNODE_REQUIRE_NETNS") == "1":
            pytest.fail("unshare and ip (util-linux, iproute2) are needed for this test")
        pytest.skip("unshare or ip is not installed")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rn is not allowed here: {probe.stderr.strip()}")
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-m", "p2pnode.demo"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "over loopback with direct addresses" in done.stdout
    assert '"outcome": "ok"' in done.stdout
