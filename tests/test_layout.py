"""The README's layer diagram is the folder tree, file for file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "p2pnode"


def _tree_from_readme() -> set[str]:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## How the layers fit together\n.*?```\n(p2pnode/\n.*?)```", text, re.S)
    assert match, "the README lost its folder tree"
    paths: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, folder)
    for line in match.group(1).splitlines()[1:]:
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = "".join(folder for _, folder in stack)
        for word in line.split():
            if word.endswith("/"):
                stack.append((indent, word))
                break
            if word.endswith(".py"):
                paths.add(prefix + word)
            else:
                break  # the description starts
    return paths


def _tree_on_disk() -> set[str]:
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    return {f for f in files if not f.endswith("__init__.py") and f != "__main__.py"}


def test_readme_tree_is_the_package_tree() -> None:
    readme, disk = _tree_from_readme(), _tree_on_disk()
    assert readme - disk == set(), "the README names files that do not exist"
    assert disk - readme == set(), "files missing from the README's tree"
