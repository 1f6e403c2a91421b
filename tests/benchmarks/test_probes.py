"""The condition probes (benchmarks/probes): the clip writer's per-condition properties and the harness.

Fast: clip properties checked against independent measurements (OpenCV Laplacian, pixel means),
one stage-1 probe run of a few steps for the table's shape. Slow: a real learnability check.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.probes import clips, run
from cyberhost.data.shards import iter_raw_samples, list_shards
from cyberhost.data.transforms import read_arrays


def test_stage1_clip_hides_arms_only_in_the_reference_of_held_out_clips() -> None:
    clip = clips.stage1_clip("probe-0000", 3, held_out=True)
    frames, kps = clip["frames"].astype(int), clip["keypoints"]
    mid = ((kps[:, clips.LEFT_SHOULDER, :2] + kps[:, clips.LEFT_WRIST, :2]) / 2).round().astype(int)
    white = [(frames[i, y, x] > 235).all() for i, (x, y) in enumerate(mid)]  # the arm is drawn white
    assert not white[0] and white[-1]
    arm = [clips.LEFT_SHOULDER, clips.LEFT_ELBOW, clips.LEFT_WRIST, clips.RIGHT_SHOULDER, clips.RIGHT_ELBOW,
           clips.RIGHT_WRIST]
    assert (kps[:, arm, 2] == 1).all()  # the skeleton always has the arms


def test_stage1_torso_colour_differs_between_clips_and_stays_within_one() -> None:
    a, b = clips.stage1_clip("a-0000", 1), clips.stage1_clip("b-0000", 2)

    def torso(clip: dict) -> np.ndarray:
        x = int(clip["keypoints"][0, clips.NOSE, 0])
        return clip["frames"][:, 40:60, x - 8 : x + 8].reshape(len(clip["frames"]), -1, 3).mean(1)

    ta, tb = torso(a), torso(b)
    assert np.abs(ta - ta[0]).max() < 3
    assert np.abs(ta[0] - tb[0]).max() > 10


def test_stage2_mouth_follows_audio_envelope() -> None:
    clip = clips.stage2_clip("m-0000", 5)
    per = round(clips.AUDIO_SAMPLE_RATE / clips.FPS)
    loud = np.sqrt(np.mean(clip["audio"].reshape(-1, per) ** 2, axis=1))
    x = clip["keypoints"][:, clips.NOSE, 0].round().astype(int)
    dark = np.array([(f[17:24, xi - 5 : xi + 5].mean(-1) < 80).sum() for f, xi in zip(clip["frames"], x, strict=True)])
    assert np.corrcoef(loud, dark)[0, 1] > 0.9


def test_stage2_background_ramps_and_hand_clarity_matches_opencv() -> None:
    clip = clips.stage2_clip("c-0000", 6)
    bg = clip["frames"][:, 2, 2, 0].astype(float)
    steps = np.diff(bg)
    assert np.all(np.abs(steps) > 5) and (np.all(steps > 0) or np.all(steps < 0))
    f, h = clips.MOTION + 1, 0
    box = clip["hand_boxes"][f, h]
    x0, y0, x1, y1 = int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3]))
    grey = cv2.cvtColor(np.ascontiguousarray(clip["frames"][f, y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert clip["hand_clarity"][f, h] == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F).std(), rel=1e-6)
    sharp = [clips.stage2_clip(f"s{i}-0000", i)["hand_clarity"][clips.MOTION:] for i in range(4)]
    scores = np.concatenate(sharp).ravel()
    assert scores.max() > 1.5 * scores.min()  # sharp and blurred hands give distinct scores


def test_stage2_hands_are_small_in_motion_frames(tmp_path: Path) -> None:
    clip = clips.stage2_clip("h-0000", 8)
    side = clip["hand_boxes"][..., 2] - clip["hand_boxes"][..., 0]
    assert side[: clips.MOTION].max() < side[clips.MOTION :].min() / 2
    folder = clips.write_probe_shards(tmp_path / "s2", 2, 3)
    raw = list(iter_raw_samples(list_shards(folder)[0]))
    assert len(raw) == 3 and read_arrays(raw[0])["num_frames"] == clips.MOTION + clips.TARGETS


def test_harness_runs_and_writes_the_table(tmp_path: Path) -> None:
    s = run.Settings(steps=(1, 1), batch=2, train_clips=2, eval_clips=2, eval_batch=2, draws=1, overfit_steps=0)
    report = run.run("cpu", "tiny", 1, tmp_path, stages=(1,), overfit=False, settings=s)
    rows = json.loads((tmp_path / "probes.json").read_text())["table"]
    assert [r["condition"] for r in rows] == [p.name for p in run.PROBES]
    for r in rows:
        if r["stage"] == 1:
            assert {"gap", "rel_gap", "spread", "verdict"} <= r.keys() and np.isfinite(r["gap"])
        else:
            assert r["verdict"] == "n/a"
    assert "condition" in run.format_table(report["table"], None)


def test_shuffle_and_drop_alter_only_their_keys() -> None:
    import torch

    batch = {"reference": torch.arange(3)[:, None].float(), "audio": torch.zeros(3, 2),
             "drop_reference": torch.zeros(3, dtype=torch.bool)}
    probe = run.Probe("x", 1, shuffle=("reference",), drop={"drop_reference": True})
    out = run.altered(batch, probe)
    assert out["reference"].flatten().tolist() == [2, 0, 1] and out["drop_reference"].all()
    assert out["audio"] is batch["audio"]


@pytest.mark.slow
def test_conditions_are_learned(tmp_path: Path) -> None:
    """The CPU suite at its default size, one seed: every runnable probe passes, the overfit test too."""
    report = run.run("cpu", "tiny", 1, tmp_path)
    bad = [r["condition"] for r in report["table"] if r["verdict"] not in ("pass", "n/a")]
    assert not bad, run.format_table(report["table"], report["overfit"])
    assert report["overfit"]["verdict"] == "pass"
