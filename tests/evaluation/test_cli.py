"""``cyberhost evaluate`` end to end on tiny mp4s made here, with tiny weight files and synthetic keypoints."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cyberhost.evaluation import cli
from cyberhost.evaluation import evaluate as evaluate_mod
from cyberhost.evaluation.pairs import VideoPair
from cyberhost.evaluation.syncnet import SyncNetV2
from cyberhost.media import write_video
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
    assert set(agg) == {"ssim", "psnr", "fid", "fvd", "csim", "hkc", "hkv", "akd", "akd_norm", "sync_c", "sync_d"}
    assert result["skipped"] == {}
    assert 0.5 < agg["ssim"] <= 1 and 20 < agg["psnr"] < 60
    assert agg["fid"] >= 0 and result["counts"]["fid"] == 2 * FRAMES
    assert result["counts"]["fvd"] == 2  # one 16-frame clip per video
    assert agg["hkc"] == pytest.approx(0.8) and agg["hkv"] == pytest.approx(0.0, abs=1e-6)
    # the stub backend finds the same person in generated and ground-truth frames: 44 points a frame
    assert agg["akd"] == pytest.approx(0.0) and result["counts"]["akd_frames"] == 2 * FRAMES
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


def _strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in metrics.json: not JSON")

    return json.loads(text, parse_constant=refuse)


def test_nan_metric_is_written_as_null_with_the_reason(videos) -> None:
    config = evaluate_mod.EvalConfig(metrics=("ssim", "csim"), keypoints="mediapipe")
    nan_embedder = lambda faces: np.full((len(faces), 4), np.nan)  # noqa: E731 - a degenerate embedder
    evaluator = evaluate_mod.Evaluator(config, face_embedder=nan_embedder)
    pair = VideoPair("a", videos / "gen" / "a.mp4", videos / "gt" / "a.mp4")
    result = evaluator.run([pair])
    result["aggregate"]["extra"] = float("inf")  # anything non-finite that reaches the writer
    paths = evaluate_mod.write_outputs(result, videos / "out")
    written = _strict_json(paths["json"].read_text())
    video = written["videos"][0]
    assert video["csim"] is None and "csim came out nan" in video["skipped"]["csim"]
    assert written["aggregate"]["csim"] is None and "csim came out nan" in written["skipped"]["csim"]
    assert written["aggregate"]["extra"] is None and 0 < written["aggregate"]["ssim"] <= 1
    with paths["per_video"].open() as f:
        row = next(csv.DictReader(f))
    assert row["csim"] == "" and "csim came out nan" in row["skipped"]
    with paths["aggregate"].open() as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert rows["extra"]["value"] == "" and rows["csim"]["value"] == ""


def test_unwritable_output_is_a_clear_error(videos, capsys) -> None:
    blocker = videos / "a_file"
    blocker.write_text("not a folder")
    argv = ["--generated", str(videos / "gen" / "a.mp4"), "--ground-truth", str(videos / "gt" / "a.mp4"),
            "--keypoints", "none", "--metrics", "psnr", "--output", str(blocker / "out")]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "psnr:" in captured.out  # the numbers are printed before the write fails
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "cannot write the results to" in errors[0] and "Traceback" not in captured.err


def test_rtmlib_without_model_files(videos, capsys) -> None:
    argv = ["--generated", str(videos / "gen" / "a.mp4"), "--keypoints", "rtmlib", "--output", str(videos / "o")]
    assert cli.main(argv) == 2
    assert "--rtmlib-det" in capsys.readouterr().err


def test_ground_truth_of_other_size_is_centre_cropped_then_resized(videos) -> None:
    # the generated video shows the centre of a wider, larger ground truth: 2x the size plus 32-px side bands
    gen = moving_frames(FRAMES, H, W, 1)
    wide = np.repeat(np.repeat(gen, 2, axis=1), 2, axis=2)  # (F, 96, 128, 3)
    rng = np.random.default_rng(3)
    bands = rng.integers(0, 256, (FRAMES, 2 * H, 32, 3), dtype=np.uint8)
    gt = np.concatenate([bands, wide, bands[:, :, ::-1]], axis=2)  # (F, 96, 192, 3): aspect 2 vs 4/3
    write_video(videos / "gen.mp4", gen, 25, crf=0)
    write_video(videos / "gt_wide.mp4", gt, 25, crf=0)
    config = evaluate_mod.EvalConfig(metrics=("ssim", "psnr"), keypoints="none")
    pair = VideoPair("w", videos / "gen.mp4", videos / "gt_wide.mp4")
    record = evaluate_mod.Evaluator(config).evaluate_pair(pair)
    assert record["psnr"] > 35 and record["ssim"] > 0.95  # compared with the right window
    assert any("192x96 centre-cropped to 128x96" in n and "resized to 64x48" in n for n in record["notes"])
    # the other protocol (resizing the whole ground truth, band included) would score far lower
    from cyberhost.evaluation.metrics import frame_metrics, resize_frames

    squashed = frame_metrics(gen, resize_frames(gt, (H, W)))
    assert squashed["psnr"] < 25
    assert "centre-cropped" in evaluate_mod.PROTOCOL["ground_truth_size"]
