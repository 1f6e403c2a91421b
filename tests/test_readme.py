"""The README's code map stays true: every file and function it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, title: str) -> str:
    start = text.index(title)
    return text[start:text.index("\n## ", start + len(title))]


def _resolve(rel: str, last: Path | None) -> Path:
    """A path as the tables write it: from the repo root, from ``cyberhost/``, or beside the file named before it."""
    for base in (ROOT, ROOT / "cyberhost", last.parent if last else None):
        if base is not None and (base / rel).exists():
            return base / rel
    return ROOT / rel


def _named(cell: str) -> list[tuple[Path, str | None]]:
    """``(file, name)`` for each file of a cell (``a.py: `f`, `g`; `b.py` ``) and each function named after it."""
    found, last = [], None
    for m in re.finditer(r"`([\w/{},.]+\.(?:py|sh|yaml))`((?::\s*(?:`[^`]+`(?:\s*\([^)]*\))?[,\s]*)+)?)", cell):
        rel, names = m.group(1), m.group(2) or ""
        braces = re.search(r"\{([^}]*)\}", rel)
        rels = [rel.replace(braces.group(0), x) for x in braces.group(1).split(",")] if braces else [rel]
        for r in rels:
            last = _resolve(r, last)
            found.append((last, None))
        found += [(last, name) for name in re.findall(r"`([A-Za-z_][\w.]*)`", names)]
    return found


def _check(pairs: list[tuple[Path, str | None]]) -> list[str]:
    problems = []
    for path, name in pairs:
        if not path.exists():
            problems.append(f"{path.relative_to(ROOT)} does not exist")
        elif name and path.suffix == ".py":
            leaf = name.split(".")[-1]
            if not re.search(rf"^\s*(def|class) {leaf}\b|^\s*self\.{leaf}\s*=", path.read_text(), re.M):
                problems.append(f"{path.relative_to(ROOT)} has no {name}")
    return problems


def test_code_map_names_real_files_and_functions() -> None:
    text = (ROOT / "README.md").read_text()
    pairs = []
    for line in _section(text, "## What is implemented (code map)").splitlines():
        if line.startswith("| ") and not line.startswith("| paper"):
            pairs += _named(line.split("|")[2])
    assert len(pairs) > 40, "the code map table was not found"
    assert not _check(pairs), _check(pairs)


def test_make_targets_table_lists_every_target_and_its_entry_points() -> None:
    text = (ROOT / "README.md").read_text()
    section = _section(text, "## Make targets")
    listed = set(re.findall(r"^\| `make ([\w-]+)", section, re.M))
    targets = set(re.findall(r"^([a-z][\w-]*):.*## ", (ROOT / "Makefile").read_text(), re.M)) - {"help"}
    assert listed == targets
    pairs = []
    for line in section.splitlines():
        if line.startswith("| `make"):
            pairs += _named(line.split("|")[3])
    assert not _check(pairs), _check(pairs)
