"""The one atomic file write: old or new content, never half; temporary files named to be found."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cyberhost.data.shards import remove_uncommitted
from cyberhost.media.files import TMP_SUFFIX, AtomicFile, atomic_copy, atomic_file, atomic_write_bytes, temp_path


def test_write_replace_and_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write_bytes(target, b"one")  # the folder is created
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    with pytest.raises(RuntimeError, match="killed"), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_temporary_name_is_hidden_per_process_and_a_tmp(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "clips-00003-000-abc.json")
    assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(TMP_SUFFIX)
    assert str(os.getpid()) in tmp.name
    tmp.write_bytes(b"left by a killed run")
    assert tmp in remove_uncommitted(tmp_path, shard_index=3)  # the shard bookkeeping finds it
    assert not tmp.exists()


def test_commit_under_a_name_chosen_at_the_end_and_copy(tmp_path: Path) -> None:
    out = AtomicFile(tmp_path / "open.tar.tmp")
    out.file.write(b"shard")
    assert not (tmp_path / "final.tar").exists()
    out.commit(tmp_path / "final.tar")
    assert (tmp_path / "final.tar").read_bytes() == b"shard" and not (tmp_path / "open.tar.tmp").exists()
    dropped = AtomicFile(tmp_path / "other.tmp")
    dropped.file.write(b"x")
    dropped.discard()
    assert not (tmp_path / "other.tmp").exists()
    atomic_copy(tmp_path / "final.tar", tmp_path / "merged" / "final.tar")
    assert (tmp_path / "merged" / "final.tar").read_bytes() == b"shard"
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["final.tar"]
