"""Packaging metadata: an SPDX license expression and the license file shipped."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_license_is_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # a string, not the deprecated {text = ...} table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "The p2pnode authors" in text and "2026" in text


def test_the_readme_has_no_relative_links() -> None:
    """It is also the package's description, shown where relative links lead nowhere."""
    import re

    readme = (ROOT / "README.md").read_text()
    relative = [
        m for m in re.findall(r"\]\(([^)]+)\)", readme) if "://" not in m and not m.startswith("#")
    ]
    assert relative == [], "name files as `path` in the source tree instead of linking them"
