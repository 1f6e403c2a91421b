"""The media room's contract and what data_prep may import (README, "Code layout"), read from the source tree."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA_PREP_MAY_IMPORT = ("cyberhost.data.schema", "cyberhost.data.shards", "cyberhost.data.regions", "cyberhost.media")
"""Project code data_prep may use: the schema (with its on-disk form, the shards), the media room and the region code."""


def _imports(path: Path) -> list[str]:
    """Modules a file imports (``from a import b`` counts as ``a.b`` when ``a.b`` is a module)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                out.append(name if importlib.util.find_spec(node.module) and _is_module(name) else node.module)
    return out


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _sources(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def test_pyav_is_imported_only_in_the_media_room() -> None:
    users = {p.relative_to(ROOT).as_posix() for p in _sources("cyberhost", "data_prep", "benchmarks")
             if any(m == "av" or m.startswith("av.") for m in _imports(p))}
    assert users and all(u.startswith("cyberhost/media/") for u in users), sorted(users)


def test_data_prep_imports_the_schema_shards_regions_and_media_only() -> None:
    used = {m for p in _sources("data_prep") for m in _imports(p) if m.startswith("cyberhost")}
    outside = sorted(m for m in used if not m.startswith(DATA_PREP_MAY_IMPORT))
    assert not outside, f"data_prep imports {outside}; the README's code layout allows {DATA_PREP_MAY_IMPORT}"
    assert any(m.startswith("cyberhost.media") for m in used)  # the scan sees real imports


def test_data_prep_loads_no_other_project_code_through_its_imports() -> None:
    # what the allowed modules pull in counts too: import every data_prep module in a fresh process
    code = ("import importlib, json, pkgutil, sys, data_prep\n"
            "for m in pkgutil.iter_modules(data_prep.__path__):\n"
            "    importlib.import_module('data_prep.' + m.name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    loaded = json.loads(run.stdout.splitlines()[-1])
    project = [m for m in loaded if m.startswith("cyberhost.")]
    packages = ("cyberhost.data",)  # a package __init__ runs on the way to its allowed modules
    outside = sorted(m for m in project if m not in packages and not m.startswith(DATA_PREP_MAY_IMPORT))
    assert not outside, f"importing data_prep loads {outside}"
    assert "cyberhost.data.shards" in project and "cyberhost.media.writer" in project  # the check sees real loads
    heavy = sorted(m for m in ("torch", "lightning", "diffusers", "transformers") if m in loaded)
    assert not heavy, f"importing data_prep loads {heavy}"


def test_the_media_room_depends_on_the_schema_only() -> None:
    used = {m for p in _sources("cyberhost/media") for m in _imports(p)
            if m.startswith("cyberhost") and not m.startswith("cyberhost.media")}
    assert used == {"cyberhost.data.schema"}, sorted(used)
