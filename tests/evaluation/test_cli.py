"""``cyberhost evaluate`` end to end on tiny mp4s made here, with tiny weight files and synthetic keypoints."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cyberhost.evaluation import cli
from cyberhost.evaluation import evaluate as evaluate_mod
from cyberhost.evaluation.io import write_video
from cyberhost.evaluation.syncnet import SyncNetV2
from tests.evaluation.helpers import MeanColour, TinyI3D, moving_frames, person_keypoints, save_script

H, W, FRAMES = 48, 64, 20


@pytest.fixture
def videos(tmp_path, monkeypatch):
    """Two generated/ground-truth pairs with audio, a weights dir, and synthetic keypoints."""
    rng = np.random.default_rng(0)
    for name, seed in (("a", 1), ("b", 2)):
        gt = moving_frames(FRAMES, H, W, seed)
        gen = np.clip(gt.astype(int) + rng.integers(-8, 8, gt.shape), 0, 255).astype(np.uint8)
        audio = rng.normal(scale=0.1, size=FRAMES * 640).astype(np.float32)
        (tmp_path / "gen").mkdir(exist_ok=True)
        (tmp_path / "gt").mkdir(exist_ok=True)
        write_video(tmp_path / "gen" / f"{name}.mp4", gen, 25, audio)
        write_video(tmp_path / "gt" / f"{name}.mp4", gt, 25)
    weights = tmp_path / "weights"
    weights.mkdir()
    save_script(MeanColour(), weights / "pt_inception-2015-12-05-6726825d.pth")  # TorchScript is accepted too
    save_script(TinyI3D(), weights / "i3d_torchscript.pt")
    save_script(MeanColour(), weights / "arcface.pt")
    torch.save(SyncNetV2().state_dict(), weights / "syncnet_v2.model")
    monkeypatch.setattr(
        evaluate_mod, "backend_keypoint_fn", lambda *a, **k: lambda f: person_keypoints(len(f), f.shape[2], f.shape[1])
    )
    return tmp_path


def test_end_to_end_all_metrics(videos, capsys) -> None:
    out = videos / "out"
    argv = [
        "--generated",
        str(videos / "gen"),
        "--ground-truth",
        str(videos / "gt"),
        "--weights-dir",
        str(videos / "weights"),
    ]
    argv += [
        "--face-weights",
        str(videos / "weights" / "arcface.pt"),
        "--output",
        str(out),
        "--tb-dir",
        str(videos / "tb"),
    ]
    assert cli.main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    agg = result["aggregate"]
    assert set(agg) == {"ssim", "psnr", "fid", "fvd", "csim", "hkc", "hkv", "sync_c", "sync_d"}
    assert result["skipped"] == {}
    assert 0.5 < agg["ssim"] <= 1 and 20 < agg["psnr"] < 60
    assert agg["fid"] >= 0 and result["counts"]["fid"] == 2 * FRAMES
    assert result["counts"]["fvd"] == 2  # one 16-frame clip per video
    assert agg["hkc"] == pytest.approx(0.8) and agg["hkv"] == pytest.approx(0.0, abs=1e-6)
    assert -1 <= agg["csim"] <= 1 and np.isfinite(agg["sync_c"])
    # the reference-image fallback is recorded
    assert any("first ground-truth frame" in n for n in result["videos"][0]["notes"])
    with (out / "per_video.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["a", "b"] and float(rows[0]["ssim"]) > 0.5
    with (out / "aggregate.csv").open() as f:
        assert {r["metric"] for r in csv.DictReader(f)} >= {"fid", "fvd", "sync_c"}
    assert list((videos / "tb").glob("events.out.tfevents.*"))
    assert "ssim" in capsys.readouterr().out


def test_missing_weights_are_skipped_with_reasons(videos) -> None:
    out = videos / "out"
    argv = ["--generated", str(videos / "gen" / "a.mp4"), "--ground-truth", str(videos / "gt" / "a.mp4")]
    assert cli.main(argv + ["--keypoints", "none", "--output", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert set(result["aggregate"]) == {"ssim", "psnr"}
    assert "--fid-weights" in result["skipped"]["fid"] and "i3d_torchscript.pt" in result["skipped"]["fvd"]
    assert "syncnet_v2.model" in result["skipped"]["sync"] and result["skipped"]["hkc"].startswith("keypoints disabled")
    with (out / "aggregate.csv").open() as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert rows["fid"]["value"] == "" and "no weights" in rows["fid"]["skipped"]


def test_clear_errors(videos, capsys) -> None:
    short = moving_frames(FRAMES - 3, H, W, 1)
    write_video(videos / "short.mp4", short, 25)
    argv = [
        "--generated",
        str(videos / "gen" / "a.mp4"),
        "--ground-truth",
        str(videos / "short.mp4"),
        "--keypoints",
        "none",
    ]
    argv += ["--metrics", "ssim", "psnr", "--output", str(videos / "o")]
    assert cli.main(argv) == 2
    assert "generated video has 20 frames, ground truth 17" in capsys.readouterr().err
    assert cli.main(argv + ["--length-mismatch", "truncate"]) == 0
    result = json.loads((videos / "o" / "metrics.json").read_text())
    assert result["videos"][0]["frames"] == 17 and "truncated" in result["videos"][0]["notes"][0]
    assert cli.main(["--generated", str(videos / "nope.mp4"), "--output", str(videos / "o")]) == 2
    assert "generated videos not found" in capsys.readouterr().err
    assert cli.main(["--output", str(videos / "o")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
