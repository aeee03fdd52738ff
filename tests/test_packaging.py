"""The wheel ships the library only, and the arrows between the repository's Python packages
run one way: tests and benchmarks import the dev harness, never each other; the harness
imports neither; the library imports none of them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_the_library_only() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["resilientdb"]
    # The harness is a package of its own at the root, not inside the shipped one.
    assert (ROOT / "harness" / "__init__.py").is_file()
    assert not (ROOT / "resilientdb" / "harness").exists()


def imported_packages(folder: str) -> set[tuple[str, str]]:
    """(top-level package, file) for every import statement below ``folder``."""
    found: set[tuple[str, str]] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                found.add((words[1].split(".")[0], str(path.relative_to(ROOT))))
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("resilientdb", {"harness", "tests", "benchmarks"}),
        ("harness", {"tests", "benchmarks"}),
        ("tests", {"benchmarks"}),
        ("benchmarks", {"tests"}),
    ],
)
def test_no_arrow_back(folder: str, forbidden: set[str]) -> None:
    wrong = sorted(
        f"{path} imports {top}" for top, path in imported_packages(folder) if top in forbidden
    )
    assert not wrong
