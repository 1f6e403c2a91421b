"""Pair discovery (by stem and from a CSV), including the error messages."""

from __future__ import annotations

import pytest

from cyberhost.evaluation.pairs import discover_pairs, read_pairs_csv


def _touch(folder, *names) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_discover_pairs_by_stem(tmp_path) -> None:
    _touch(tmp_path / "gen", "a.mp4", "b.mp4", "notes.txt")
    _touch(tmp_path / "gt", "a.mov", "b.mp4", "c.mp4")
    _touch(tmp_path / "ref", "a.png")
    pairs = discover_pairs(tmp_path / "gen", tmp_path / "gt", tmp_path / "ref")
    assert [(p.name, p.ground_truth.name, p.reference_image and p.reference_image.name) for p in pairs] == [
        ("a", "a.mov", "a.png"),
        ("b", "b.mp4", None),
    ]
    _touch(tmp_path / "gt2", "a.mp4")
    with pytest.raises(FileNotFoundError, match="no file for: b"):
        discover_pairs(tmp_path / "gen", tmp_path / "gt2")
    with pytest.raises(FileNotFoundError, match="generated videos not found"):
        discover_pairs(tmp_path / "nope", tmp_path / "gt")
    with pytest.raises(ValueError, match="as files or both as directories"):
        discover_pairs(tmp_path / "gen", tmp_path / "gt" / "a.mov")


def test_pairs_csv(tmp_path) -> None:
    _touch(tmp_path / "v", "g1.mp4", "t1.mp4", "g2.mp4")
    (tmp_path / "pairs.csv").write_text("generated,ground_truth,name\nv/g1.mp4,v/t1.mp4,first\nv/g2.mp4,,\n")
    pairs = read_pairs_csv(tmp_path / "pairs.csv")
    assert [(p.name, p.ground_truth) for p in pairs] == [("first", tmp_path / "v" / "t1.mp4"), ("g2", None)]
    (tmp_path / "bad.csv").write_text("generated,ground_truth\nv/g1.mp4,v/missing.mp4\n")
    with pytest.raises(FileNotFoundError, match=r"bad.csv:2: ground_truth file not found"):
        read_pairs_csv(tmp_path / "bad.csv")
    (tmp_path / "nohead.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="'generated' column"):
        read_pairs_csv(tmp_path / "nohead.csv")
