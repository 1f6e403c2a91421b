"""Kill a real run with SIGKILL, rerun it, and get exactly the clips of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cyberhost.data import iter_clips
from cyberhost.data.shards import commit_records
from data_prep.__main__ import main
from tests.data_prep.media import sample_frames, tone, write_video

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    for i, name in enumerate(("astronaut", "grace_hopper", "cameraman")):
        write_video(d / f"v{i}.mp4", sample_frames(name, 50), tone(2.0, freq=200 + 50 * i))
    conf = d.parent / "resume.yaml"
    conf.write_text(yaml.safe_dump({"clip_frames": 25, "clip_stride": 25, "min_clip_frames": 20, "max_short_side": 256, "max_shard_mb": 0.0001}))
    return d, conf


def _args(raw_dir: Path, out: Path, conf: Path) -> list[str]:
    return ["--input", str(raw_dir), "--output", str(out), "--workers", "1", "--config", str(conf), "--no-progress"]


def _clips(out: Path) -> dict[str, dict]:
    return {c["key"]: c for c in iter_clips(out)}


def test_sigkill_then_rerun_equals_uninterrupted_run(raw, tmp_path):
    raw_dir, conf = raw
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", *_args(raw_dir, killed, conf)], cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((killed / "shards").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker process
        proc.wait()
    records = commit_records(killed / "shards")
    assert 1 <= len(records) < 3, "the kill must land mid-run"
    # what a reader sees now is whole: every committed shard reads completely, partial data only in *.tmp
    assert len(list(iter_clips(killed))) == sum(r["num_clips"] for r in records)
    for tar in (killed / "shards").glob("*.tar"):
        with tarfile.open(tar) as t:
            assert t.getmembers()

    assert main(_args(raw_dir, killed, conf)) == 0  # resume
    assert not list((killed / "shards").glob("*.tmp"))
    full = tmp_path / "full"
    assert main(_args(raw_dir, full, conf)) == 0
    got, want = _clips(killed), _clips(full)
    assert sorted(got) == sorted(want) and len(want) == 6
    for key, clip in want.items():
        for name in ("frames", "audio", "keypoints", "face_box", "hand_boxes", "thorax", "movement_range"):
            np.testing.assert_array_equal(got[key][name], clip[name], err_msg=f"{key}:{name}")


def test_rerun_of_a_finished_output_does_nothing(raw, tmp_path):
    raw_dir, conf = raw
    out = tmp_path / "out"
    assert main(_args(raw_dir, out, conf)) == 0
    before = sorted(p.name for p in (out / "shards").iterdir())
    assert main(_args(raw_dir, out, conf)) == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == before
