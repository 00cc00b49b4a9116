"""The README's Layout section names every module of the two packages, once.

A newcomer reads the tree from it: a module missing there, or a row naming a module
that no longer exists, is a lie this test refuses. Generated code is listed by folder.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("ledger/api/", "ledger/grpc/")
PACKAGE_MARKERS = ("__init__.py",)


def _modules() -> set[str]:
    found = set()
    for package in ("ledger", "projections"):
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(GENERATED) or path.name in PACKAGE_MARKERS:
                continue
            found.add(relative)
    return found


def _listed() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    names = []
    for row in layout.splitlines():
        if not row.startswith("| `"):
            continue
        first_cell = row.split("|")[1]
        names += re.findall(r"`([^`]+)`", first_cell)
    return names


def test_every_module_is_listed_once_and_every_row_exists() -> None:
    listed = _listed()
    modules = [name for name in listed if name.endswith(".py")]
    assert len(modules) == len(set(modules)), "a module is listed twice"
    assert set(modules) == _modules()
    for name in listed:
        assert (ROOT / name).exists(), f"the README lists {name}, which does not exist"
    for folder in GENERATED:
        assert folder in listed
