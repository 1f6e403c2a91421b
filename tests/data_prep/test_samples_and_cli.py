"""Committed samples, keypoint backends, config, partition, segmentation and CLI errors."""

from __future__ import annotations

import av
import numpy as np
import pytest

from cyberhost.data.schema import FACE, LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_SHOULDER
from cyberhost.media.keypoints import (
    FACE_MESH_TO_68,
    MediaPipeHolistic,
    dominant_person,
)
from data_prep.__main__ import DEFAULT_CONFIG, main
from data_prep.config import PrepConfig
from data_prep.run import PrepError, partition, partition_from_env
from data_prep.segment import windows
from tests.data_prep.media import SAMPLES, sample_frames

NAMES = ("astronaut", "grace_hopper", "cameraman")


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_h264_aac_25fps_and_long_enough(name):
    with av.open(str(SAMPLES / f"{name}.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert v.average_rate == 25 and min(v.width, v.height) >= 256
        assert 4.0 <= c.duration / 1e6 <= 8.1
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < 3e6


@pytest.mark.parametrize("name", NAMES)
def test_mediapipe_finds_pose_and_face_in_most_sample_frames(name):
    backend = MediaPipeHolistic()
    hits = 0
    frames = sample_frames(name, 40)
    for frame in frames:
        person, _ = dominant_person(backend(frame))
        shoulders = person[[LEFT_SHOULDER, RIGHT_SHOULDER], 2].min() > 0.5
        hits += bool(shoulders and person[FACE, 2].min() > 0)
    backend.close()
    assert hits >= 0.9 * len(frames)


def test_face_map_is_68_distinct_mesh_points_with_sane_geometry():
    assert len(FACE_MESH_TO_68) == 68 and len(set(FACE_MESH_TO_68)) == 68 and max(FACE_MESH_TO_68) < 468
    face = MediaPipeHolistic(static_image_mode=True)(sample_frames("astronaut", 1)[0])[0, FACE]
    assert face[36, 0] < face[39, 0] < face[42, 0] < face[45, 0]  # eye corners left to right in the image
    assert face[19, 1] < face[37, 1] < face[30, 1] < face[51, 1] < face[57, 1] < face[8, 1]  # brow, eye, nose, lips, chin


def test_dominant_person_is_the_largest():
    persons = np.zeros((3, NUM_KEYPOINTS, 3), np.float32)
    for i, side in enumerate((10, 100, 40)):
        persons[i, :17] = [[0, 0, 1]] * 16 + [[side, side, 1]]
    person, ratio = dominant_person(persons)
    assert person[16, 0] == 100 and ratio == pytest.approx(0.16)
    assert dominant_person(persons[:0])[1] == 0.0


def test_committed_config_loads_and_bad_values_say_what_to_change(tmp_path):
    cfg = PrepConfig.from_yaml(DEFAULT_CONFIG)
    assert cfg == PrepConfig()  # the YAML documents the defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("clip_frame: 10\n")
    with pytest.raises(ValueError, match="unknown key.*clip_frame"):
        PrepConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="min_clip_frames"):
        PrepConfig(clip_frames=10, min_clip_frames=20)
    with pytest.raises(ValueError, match="keypoints.backend"):
        PrepConfig.from_yaml(None).__class__(keypoints={"backend": "x"})


def test_partition_is_deterministic_disjoint_and_complete(monkeypatch):
    inputs = [f"d/{i}.mp4" for i in range(100)]
    parts = [partition(inputs, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(inputs) and all(parts)
    assert partition(inputs, 2, 4) == parts[2]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert partition_from_env(None, None) == (2, 3)
    assert partition_from_env(4, 1) == (1, 4)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert partition_from_env(None, None) == (1, 2)
    with pytest.raises(PrepError):
        partition_from_env(2, 2)


@pytest.mark.parametrize(
    ("n", "length", "stride", "minimum", "want"),
    [(7, 4, 2, 3, [(0, 4), (2, 4), (4, 3)]), (12, 4, 6, 2, [(0, 4), (6, 4)]), (9, 4, 6, 3, [(0, 4), (6, 3)]), (3, 4, 4, 4, [])],
)
def test_windows(n, length, stride, minimum, want):
    got = [(s, len(items)) for s, items in windows(((k, k) for k in range(n)), length, stride, minimum)]
    assert got == want


def test_cli_refuses_missing_empty_and_useless_inputs(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(SystemExit, match=r"no video files .*; 1 other file\(s\) ignored, e.g. a.txt: extension .txt is not a video"):
        main(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.mp4").write_text("not a video")
    with pytest.raises(SystemExit, match=r"no input of part 0/1 gave a clip \(1 inputs, 0 unfinished\)"):
        main(["--input", str(tmp_path / "bad"), "--output", str(tmp_path / "o"), "--workers", "1", "--no-progress"])
