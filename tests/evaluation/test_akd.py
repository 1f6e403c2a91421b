"""AKD against hand computations: synthetic keypoint arrays, and ``cyberhost evaluate`` on tiny mp4s.

The end-to-end test's stub backend reads an 8x8 marker block in each frame (lossless mp4s) to
decide where the person is, so the distances the evaluator must find are known in advance.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from cyberhost.data.schema import LEFT_HAND, LEFT_SHOULDER, NOSE, NUM_KEYPOINTS, RIGHT_HAND, RIGHT_SHOULDER
from cyberhost.evaluation import cli
from cyberhost.evaluation import evaluate as evaluate_mod
from cyberhost.evaluation.metrics import average_keypoint_distance, frame_keypoint_distances, person_scale
from cyberhost.media import write_video
from tests.evaluation.helpers import person_keypoints

LEFT_ELBOW, LEFT_BIG_TOE, NOSE_TIP = 7, 17, 23 + 30


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """3 frames of (generated, ground truth) with known distances; frame 2 has nothing usable."""
    gen = np.zeros((3, NUM_KEYPOINTS, 3), np.float32)
    gt = np.zeros_like(gen)
    # frame 0: nose 2 px off, both shoulders (3, 4) -> 5 px off: (2 + 5 + 5) / 3 = 4
    gt[0, [NOSE, LEFT_SHOULDER, RIGHT_SHOULDER]] = [[50, 10, 1], [70, 40, 1], [30, 40, 1]]
    gen[0, [NOSE, LEFT_SHOULDER, RIGHT_SHOULDER]] = [[50, 12, 1], [73, 44, 0.9], [33, 44, 0.4]]
    gt[0, LEFT_ELBOW] = [70, 10, 0.9]  # absent in the generated frame: not compared (but sizes the person)
    gen[0, LEFT_HAND.start] = [500, 500, 0.2]  # below 0.3 in the generated frame
    gt[0, LEFT_HAND.start] = [20, 20, 1.0]
    gen[0, NOSE_TIP], gt[0, NOSE_TIP] = [0, 0, 1], [40, 30, 1]  # face: not an AKD point
    gen[0, LEFT_BIG_TOE], gt[0, LEFT_BIG_TOE] = [0, 0, 1], [40, 30, 1]  # feet: not an AKD point
    # frame 1: 21 left-hand points (6, 8) -> 10 px off, ground-truth confidence exactly 0.3 (counts);
    # the right hand is only in the generated frame
    gt[1, LEFT_HAND] = [20, 30, 0.3]
    gen[1, LEFT_HAND] = [26, 38, 1.0]
    gen[1, RIGHT_HAND] = [5, 5, 1.0]
    # frame 2: a ground-truth person (box 60 x 80 -> diagonal 100), every generated point at 0.29
    gt[2, [NOSE, LEFT_SHOULDER, RIGHT_SHOULDER]] = [[50, 0, 1], [80, 80, 1], [20, 80, 1]]
    gen[2, :, :2], gen[2, :, 2] = gt[2, :, :2], 0.29
    return gen, gt


def test_akd_hand_computed() -> None:
    gen, gt = _pair()
    np.testing.assert_allclose(frame_keypoint_distances(gen, gt), [4.0, 10.0, np.nan])
    # ground-truth body boxes: frame 0 x 30..70, y 10..40 -> 50; frame 1 none; frame 2 -> 100
    assert person_scale(gt) == pytest.approx(75.0)
    result = average_keypoint_distance(gen, gt)
    assert result.akd == pytest.approx((4 + 10) / 2)  # frame 2 is skipped, not scored 0
    assert (result.frames, result.skipped_frames) == (2, 1)
    assert result.scale == pytest.approx(75.0) and result.akd_norm == pytest.approx(7 / 75)


def test_akd_without_usable_points_or_scale() -> None:
    gen, gt = _pair()
    nothing = average_keypoint_distance(gen[2:], gt[2:])
    assert math.isnan(nothing.akd) and math.isnan(nothing.akd_norm)
    assert (nothing.frames, nothing.skipped_frames) == (0, 1) and nothing.scale == pytest.approx(100.0)
    hands_only = average_keypoint_distance(gen[1:2], gt[1:2])  # a distance but no body to size the person
    assert hands_only.akd == pytest.approx(10.0) and math.isnan(hands_only.scale) and math.isnan(hands_only.akd_norm)
    with pytest.raises(ValueError, match="differ"):
        average_keypoint_distance(gen, gt[:2])
    with pytest.raises(ValueError, match="keypoints must be"):
        average_keypoint_distance(gen[:, :17], gt[:, :17])


H, W, FRAMES = 48, 64, 10
SHIFT = np.array([3.0, 4.0])  # 5 px


def _marker_keypoints(frames: np.ndarray) -> np.ndarray:
    """Stub backend: the top-left 8x8 block says 0 -> the still person, 128 -> shifted by SHIFT, 255 -> nobody."""
    out = person_keypoints(len(frames), frames.shape[2], frames.shape[1])
    for t, frame in enumerate(frames):
        level = round(float(frame[:8, :8].mean()) / 64)
        if level >= 3:
            out[t] = 0
        elif level >= 1:
            out[t, :, :2] += SHIFT
    return out


def _video(markers: list[int]) -> np.ndarray:
    frames = np.full((len(markers), H, W, 3), 90, np.uint8)
    for t, value in enumerate(markers):
        frames[t, :8, :8] = value
    return frames


def test_evaluate_reports_akd(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "gen").mkdir()
    (tmp_path / "gt").mkdir()
    generated = {
        "a": [128] * 6 + [0] * 2 + [255] * 2,  # 6 frames 5 px off, 2 frames 0 px, 2 without a person
        "b": [0] * FRAMES,  # 0 px
        "c": [255] * FRAMES,  # nobody in any generated frame: no AKD, 10 frames skipped
    }
    for name, markers in generated.items():
        write_video(tmp_path / "gen" / f"{name}.mp4", _video(markers), 25, crf=0)
        write_video(tmp_path / "gt" / f"{name}.mp4", _video([0] * FRAMES), 25, crf=0)
    monkeypatch.setattr(evaluate_mod, "backend_keypoint_fn", lambda *a, **k: _marker_keypoints)
    out = tmp_path / "out"
    argv = ["--generated", str(tmp_path / "gen"), "--ground-truth", str(tmp_path / "gt"), "--metrics", "akd"]
    assert cli.main(argv + ["--output", str(out)]) == 0

    result = json.loads((out / "metrics.json").read_text())
    # AKD points of person_keypoints: 2 shoulders + 42 hand points, all moved by SHIFT together
    akd_a = (6 * 5.0 + 2 * 0.0) / 8
    scale = 0.4 * W  # ground-truth shoulders at 0.3 W and 0.7 W, same height: the box is a line
    videos = {v["name"]: v for v in result["videos"]}
    assert videos["a"]["akd"] == pytest.approx(akd_a) and videos["a"]["akd_norm"] == pytest.approx(akd_a / scale)
    assert (videos["a"]["akd_frames"], videos["a"]["akd_skipped_frames"]) == (8, 2)
    assert videos["b"]["akd"] == pytest.approx(0.0) and videos["b"]["akd_frames"] == FRAMES
    assert videos["c"]["akd"] is None and videos["c"]["akd_norm"] is None  # null, not 0
    assert videos["c"]["akd_skipped_frames"] == FRAMES and "10 frames skipped" in videos["c"]["skipped"]["akd"]
    assert result["aggregate"]["akd"] == pytest.approx(akd_a / 2)  # mean over the videos with a value
    assert result["aggregate"]["akd_norm"] == pytest.approx(akd_a / scale / 2)
    counts = result["counts"]
    assert (counts["akd"], counts["akd_frames"], counts["akd_skipped_frames"]) == (2, 18, 12)
    assert result["protocol"]["version"] == 3 and "akd" in result["protocol"]
    with (out / "per_video.csv").open() as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["a"]["akd"]) == pytest.approx(akd_a) and rows["c"]["akd"] == ""
    assert rows["c"]["akd_skipped_frames"] == "10"
    with (out / "aggregate.csv").open() as f:
        assert {r["metric"] for r in csv.DictReader(f)} == {"akd", "akd_norm"}
    printed = capsys.readouterr().out
    assert f"akd: {akd_a / 2:.4f}  (n=2)" in printed and "18 frame pairs scored, 12 skipped" in printed


def test_akd_needs_ground_truth_and_keypoints(tmp_path, monkeypatch) -> None:
    write_video(tmp_path / "a.mp4", _video([0] * 4), 25, crf=0)
    monkeypatch.setattr(evaluate_mod, "backend_keypoint_fn", lambda *a, **k: _marker_keypoints)
    assert cli.main(["--generated", str(tmp_path / "a.mp4"), "--metrics", "akd", "--output", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert result["aggregate"]["akd"] is None and result["skipped"]["akd"] == "no ground truth"
    argv = ["--generated", str(tmp_path / "a.mp4"), "--ground-truth", str(tmp_path / "a.mp4"), "--metrics", "akd"]
    assert cli.main(argv + ["--keypoints", "none", "--output", str(tmp_path / "n")]) == 0
    result = json.loads((tmp_path / "n" / "metrics.json").read_text())
    assert result["aggregate"] == {} and result["skipped"]["akd"].startswith("keypoints disabled")
