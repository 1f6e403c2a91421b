"""Kill a real run with SIGKILL at two moments, rerun it, and get exactly the clips of an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from cyberhost.data import iter_clips
from cyberhost.data.schema import CLIP_FIELDS, META_FIELDS
from cyberhost.data.shards import commit_records
from data_prep.__main__ import main
from tests.data_prep.media import sample_frames, tone, write_video

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """3 videos of 2 short clips each; every input commits its own shard (tiny max_shard_mb)."""
    d = tmp_path_factory.mktemp("raw")
    for i, name in enumerate(("astronaut", "grace_hopper", "cameraman")):
        write_video(d / f"v{i}.mp4", sample_frames(name, 24), tone(0.96, freq=200 + 50 * i))
    conf = d.parent / "resume.yaml"
    conf.write_text(yaml.safe_dump({"clip_frames": 12, "clip_stride": 12, "min_clip_frames": 12, "max_short_side": 160, "max_shard_mb": 0.0001, "filters": {"min_face_size": 16.0}}))
    return d, conf


@pytest.fixture(scope="module")
def full(raw, tmp_path_factory):
    """An uninterrupted run."""
    raw_dir, conf = raw
    out = tmp_path_factory.mktemp("full")
    assert main(_args(raw_dir, out, conf)) == 0
    return out


def _args(raw_dir: Path, out: Path, conf: Path) -> list[str]:
    return ["--input", str(raw_dir), "--output", str(out), "--workers", "1", "--config", str(conf), "--no-progress"]


def _run_and_kill(args: list[str], when: Callable[[], bool]) -> None:
    """Start ``python -m data_prep`` and SIGKILL it (and its worker) as soon as ``when()`` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *args], cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not when() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _visible_state_is_whole(out: Path) -> list[dict]:
    """What a reader sees after a kill: every committed shard reads completely; partial data only in *.tmp."""
    records = commit_records(out / "shards")
    assert len(list(iter_clips(out))) == sum(r["num_clips"] for r in records) if records else not list((out / "shards").glob("*.tar"))
    for tar in (out / "shards").glob("*.tar"):
        with tarfile.open(tar) as t:
            assert t.getmembers()
    return records


def test_sigkill_twice_then_rerun_equals_uninterrupted_run(raw, full, tmp_path):
    raw_dir, conf = raw
    killed = tmp_path / "killed"
    shards = killed / "shards"

    # moment 1: the first clip is in the open shard, nothing is committed yet
    _run_and_kill(_args(raw_dir, killed, conf), lambda: any(shards.glob("*.tar.tmp")) if shards.is_dir() else False)
    assert any(shards.glob("*.tar.tmp")) and not commit_records(shards), "kill 1 must land inside the first shard"
    _visible_state_is_whole(killed)

    # moment 2: the rerun drops the leftover, then is killed right after committing an input
    _run_and_kill(_args(raw_dir, killed, conf), lambda: len(commit_records(shards)) >= 1)
    records = _visible_state_is_whole(killed)
    assert 1 <= len(records) < 3, "kill 2 must land mid-run"

    assert main(_args(raw_dir, killed, conf)) == 0  # resume to the end
    assert not list(shards.glob("*.tmp"))
    got, want = list(iter_clips(killed)), list(iter_clips(full))
    got_keys, want_keys = sorted(c["key"] for c in got), sorted(c["key"] for c in want)
    assert got_keys == want_keys and len(want_keys) == 6  # a list, so a duplicated clip fails
    assert max(Counter(got_keys).values()) == 1
    by_key = {c["key"]: c for c in got}
    for clip in want:
        for name in CLIP_FIELDS:  # frames, audio, keypoints, face_box, hand_boxes, hand_clarity, thorax, movement_range
            np.testing.assert_array_equal(by_key[clip["key"]][name], clip[name], err_msg=f"{clip['key']}:{name}")
        assert {m: by_key[clip["key"]][m] for m in META_FIELDS} == {m: clip[m] for m in META_FIELDS}
    assert sorted(r["shard"] for r in commit_records(shards)) == sorted(p.name for p in shards.glob("*.tar"))  # no orphan left


def test_rerun_of_a_finished_output_does_nothing(raw, full, tmp_path):
    raw_dir, conf = raw
    out = tmp_path / "out"
    shutil.copytree(full, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert main(_args(raw_dir, out, conf)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
