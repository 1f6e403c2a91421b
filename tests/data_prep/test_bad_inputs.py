"""One run over a corpus of good and bad inputs made here: nothing crashes, every file gets a precise entry."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from cyberhost.data import iter_clips
from data_prep.__main__ import main
from tests.data_prep.media import SAMPLES, sample_frames, tone, write_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    person = sample_frames("grace_hopper", 50)
    write_video(d / "good.mp4", person, tone(2.0))
    (d / "sub").mkdir()
    write_video(d / "sub" / "rotated.mp4", person[:30], tone(1.2), rotation=90)
    write_video(d / "vfr.mkv", person[:30], tone(1.3), pts=[round(k * 1000 / 30) for k in range(30)][:15] + [500 + 60 * k for k in range(15)])
    write_video(d / "no_audio.mp4", person[:30])
    write_video(d / "audio_only.mp4", None, tone(1.0))
    write_video(d / "no_person.mp4", np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (25, 64, 1, 3)).astype(np.uint8), tone(1.0))
    write_video(d / "short.mp4", person[:12], tone(0.5))
    write_video(d / "huge.mp4", np.zeros((2, 1024, 1280, 3), np.uint8), tone(0.1))
    mkv = write_video(d / "whole.mkv", person, tone(2.0)).read_bytes()
    (d / "truncated.mkv").write_bytes(mkv[: len(mkv) * 2 // 3])
    (d / "whole.mkv").unlink()
    mp4 = (SAMPLES / "astronaut.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 20)
    (d / "notes.txt").write_text("ignored: not a video extension")
    (d / "dangling.mp4").symlink_to(d / "missing-target.mp4")
    locked = d / "locked.mp4"
    shutil.copy(d / "short.mp4", locked)
    locked.chmod(0)
    out = tmp_path_factory.mktemp("out")
    return d, out


@pytest.fixture(scope="module")
def report(corpus, small_config_module):
    raw, out = corpus
    assert main(["--input", str(raw), "--output", str(out), "--workers", "1", "--config", str(small_config_module), "--no-progress"]) == 0
    return {e["file"]: e for e in json.loads((out / "report.json").read_text())["files"]}


@pytest.fixture(scope="module")
def small_config_module(tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("conf") / "prep.yaml"
    path.write_text(yaml.safe_dump({"clip_frames": 25, "clip_stride": 25, "min_clip_frames": 20, "max_short_side": 256, "max_input_pixels": 1000 * 1000}))
    return path


EXPECTED = {
    "good.mp4": ("ok", ""),
    "sub/rotated.mp4": ("ok", "rotated by 90 degrees"),
    "vfr.mkv": ("ok", ""),
    "truncated.mkv": ("ok", "truncated?"),
    "no_audio.mp4": ("skipped", "no audio track"),
    "audio_only.mp4": ("skipped", "no video stream"),
    "no_person.mp4": ("skipped", "no person detected"),
    "short.mp4": ("skipped", "too short: 0.48 s"),
    "huge.mp4": ("skipped", "resolution 1280x1024 exceeds max_input_pixels"),
    "truncated.mp4": ("skipped", "not a readable media file"),
    "zero.mp4": ("skipped", "empty file (0 bytes)"),
    "text.mp4": ("skipped", "not a readable media file"),
    "dangling.mp4": ("skipped", "unreadable"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_input_has_a_precise_entry(report, name):
    status, reason = EXPECTED[name]
    assert report[name]["status"] == status, report[name]
    assert reason in report[name]["reason"]


def test_unreadable_file(report):
    if os.geteuid() == 0:
        # root reads a chmod-000 file anyway; it is then a normal short video
        assert report["locked.mp4"]["reason"].startswith("too short")
    else:
        assert report["locked.mp4"]["status"] == "skipped" and "unreadable" in report["locked.mp4"]["reason"]


def test_only_video_files_are_inputs(report):
    assert "notes.txt" not in report and len(report) == len(EXPECTED) + 1


def test_good_inputs_give_schema_clips(corpus, report):
    _, out = corpus
    clips = list(iter_clips(out))
    by_source = {}
    for c in clips:
        by_source.setdefault(c["source"], []).append(c)
    assert {s: len(v) for s, v in by_source.items()} == {"good.mp4": 2, "sub/rotated.mp4": 1, "vfr.mkv": 1, "truncated.mkv": report["truncated.mkv"]["clips"]}
    assert report["truncated.mkv"]["clips"] >= 1
    rotated = by_source["sub/rotated.mp4"][0]
    assert (rotated["height"], rotated["width"]) == (256, 308)  # upright and downscaled
    good = by_source["good.mp4"]
    assert [c["start"] for c in good] == [0.0, 1.0] and all(c["frames"].shape == (25, 308, 256, 3) for c in good)
    assert all(np.isfinite(c["face_box"]).all() for c in good)
    assert json.loads((out / "manifest.json").read_text())["clips"] == len(clips)
