"""The condition probes (benchmarks/probes): the clip writer's per-condition properties, the harness,
and the product fixes the probes found (tiny VAE scale, encoder init).

Fast: clip properties checked against independent measurements (OpenCV Laplacian, pixel means),
one probe run of a few steps per network for the table's shape, the overfit test's generation
path. Slow: the CPU suite at its default size.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks.probes import calibrate, clips, run
from cyberhost.data.shards import iter_raw_samples, list_shards
from cyberhost.data.transforms import read_arrays
from cyberhost.models.config import SIZES
from cyberhost.models.encoders import HandEncoder, PoseEncoder

ARM = [clips.LEFT_SHOULDER, clips.LEFT_ELBOW, clips.LEFT_WRIST, clips.RIGHT_SHOULDER, clips.RIGHT_ELBOW,
       clips.RIGHT_WRIST]


def _arm_drawn(frame: np.ndarray, kps: np.ndarray) -> bool:
    """Whether the (white) left arm is drawn 30 % of the way from its shoulder to its wrist (clear of the hand)."""
    x, y = (0.7 * kps[clips.LEFT_SHOULDER, :2] + 0.3 * kps[clips.LEFT_WRIST, :2]).round().astype(int)
    return bool((frame[y, x] > 235).all())


def test_stage1_clip_hides_the_arms_in_frame_0_only() -> None:
    clip = clips.stage1_clip("probe-0000", 3)
    frames, kps = clip["frames"], clip["keypoints"]
    assert len(frames) == 2 and not _arm_drawn(frames[0], kps[0]) and _arm_drawn(frames[1], kps[1])
    assert (kps[:, ARM, 2] == 1).all()  # the skeleton always has the arms


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
    top, half = clips.MOUTH_TOP, clips.MOUTH_HALF_WIDTH - 1
    box = [f[top : top + clips.MOUTH_HEIGHT, xi - half : xi + half] for f, xi in zip(clip["frames"], x, strict=True)]
    dark = np.array([(np.abs(b.astype(int) - (60, 10, 10)).max(-1) < 3).sum() for b in box])  # mouth-coloured pixels
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
    fixed = clips.stage2_clip("f-0000", 6, sharp=True)["hand_clarity"][clips.MOTION :]
    assert fixed.min() > 0.8 * fixed.max()  # all sharp: one clarity value fits every frame


def test_stage2_hands_are_small_in_motion_frames(tmp_path: Path) -> None:
    clip = clips.stage2_clip("h-0000", 8)
    side = clip["hand_boxes"][..., 2] - clip["hand_boxes"][..., 0]
    assert side[: clips.MOTION].max() < side[clips.MOTION :].min() / 2
    folder = clips.write_probe_shards(tmp_path / "s2", "stage2", 3)
    raw = list(iter_raw_samples(list_shards(folder)[0]))
    assert len(raw) == 3 and read_arrays(raw[0])["num_frames"] == clips.MOTION + clips.TARGETS


def test_moving_arms_change_per_frame_and_are_drawn_where_the_keypoints_say() -> None:
    clip = clips.stage2_clip("v-0000", 9, moving_arms=True)
    wrist = clip["keypoints"][:, clips.LEFT_WRIST, :2]
    assert np.linalg.norm(np.diff(wrist, axis=0), axis=1).min() > 0.5  # a new pose every frame
    assert all(_arm_drawn(f, k) for f, k in zip(clip["frames"], clip["keypoints"], strict=True))
    still = clips.stage2_clip("v-0000", 9)["keypoints"][:, clips.LEFT_WRIST, 1]
    assert np.ptp(still) < 1e-3  # without moving_arms the arm angle is the clip's


def test_harness_runs_every_network_and_writes_the_table(tmp_path: Path) -> None:
    """Every network one step (the time cap stops it after its first step); the overfit test is never capped."""
    s = run.Settings(steps=(3, 3, 3), batch=(2, 2, 2), train_clips=2, eval_clips=2, eval_batch=2, draws=1,
                     overfit_steps=3, sample_steps=2, max_train_seconds=1e-6)
    report = run.run("cpu", "tiny", 1, tmp_path, settings=s, jobs=1)
    saved = json.loads((tmp_path / "probes.json").read_text())
    assert [r["steps_done"] for n in saved["networks"] for r in n["per_seed"]] == [1, 1, 1]
    assert saved["overfit"]["steps_done"] == 3  # its schedule, whatever the cap: it proves the chain end to end
    logged = {d.name for d in (tmp_path / "tb").iterdir() if d.is_dir()}
    assert logged == {f"{n}-seed0" for n in run.NETWORKS} | {"overfit"}  # one TensorBoard run per job
    rows = saved["table"]
    assert [r["condition"] for r in rows] == [p.name for p in run.PROBES]
    for r in rows:
        assert {"gap", "rel_gap", "spread", "rel_gap_frame", "per_seed_se", "seeds_above_noise", "verdict"} <= r.keys()
        assert np.isfinite(r["rel_gap"]) and min(r["per_seed_se"]) >= 0
    assert {r["where"] for r in rows} == {"frame", "face", "hands"}
    over = saved["overfit"]
    assert len(over["mse_segments"]) == 2 and np.isfinite(over["margin_db"])  # two generated segments
    assert 0.3 < saved["networks"][0]["per_seed"][0]["latent_std"] < 3  # the registry's VAE scale
    assert "condition" in run.format_table(report["table"], report["overfit"])


def test_cli_smoke_run_logs_to_the_given_tensorboard_folder(tmp_path: Path, capsys) -> None:
    tb = tmp_path / "logs"
    code = run.main(["--networks", "stage1", "--seeds", "1", "--no-overfit", "--jobs", "1", "--smoke",
                     "--out", str(tmp_path / "out"), "--tensorboard", str(tb)])
    assert code == 0 and "smoke run" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "probes.json").read_text())
    assert saved["settings"]["steps"][0] == run.SMOKE["steps"][0]
    assert saved["networks"][0]["per_seed"][0]["steps_done"] == run.SMOKE["steps"][0]
    assert list(tb.glob("events*")) and list((tb / "stage1-seed0").glob("events*"))
    assert not (tmp_path / "out" / "tb").exists()


def test_shuffle_drop_and_delay_alter_only_their_keys() -> None:
    batch = {"reference": torch.arange(3)[:, None].float(), "audio": torch.arange(8.0).repeat(3, 1),
             "drop_reference": torch.zeros(3, dtype=torch.bool), "target": torch.zeros(3, 4, 1),
             "driving_map": torch.arange(4.0).repeat(3, 1)}
    probe = run.Probe("x", "stage1", shuffle=("reference",), drop={"drop_reference": True})
    out = run.altered(batch, probe)
    assert out["reference"].flatten().tolist() == [2, 0, 1] and out["drop_reference"].all()
    assert out["audio"] is batch["audio"]
    late = run.altered(batch, run.Probe("y", "stage2", delay=("audio", "driving_map")))
    assert late["audio"][0].tolist() == [6, 7, 0, 1, 2, 3, 4, 5]  # 4 frames: one frame = 2 samples
    assert late["driving_map"][0].tolist() == [3, 0, 1, 2]


def test_region_mask_marks_the_latent_cells_whose_centres_lie_in_the_valid_boxes() -> None:
    hands = torch.full((1, 1, 2, 4), float("nan"))
    hands[0, 0, 0] = torch.tensor([0.5, 0.5, 0.75, 1.0])  # x 48..72, y 32..64 of a 64x96 frame
    batch = {"target": torch.zeros(1, 1, 3, 64, 96), "keypoints": torch.zeros(1, 1, 133, 2),
             "face_box": torch.tensor([[[0.0, 0.0, 0.1, 0.2]]]), "face_box_valid": torch.tensor([[False]]),
             "hand_boxes": hands, "hand_boxes_valid": torch.tensor([[[True, False]]])}
    expected = torch.zeros(8, 12)
    expected[4:8, 6:9] = 1  # cell centres (8 px cells): y 36..60 and x 52, 60, 68 lie inside
    assert torch.equal(run.region_mask(batch, "hands", (8, 12))[0, 0, 0], expected)
    assert run.region_mask(batch, "face", (8, 12)).sum() == 0  # an invalid box marks nothing


def test_step_errors_are_the_errors_of_the_step_itself(tmp_path: Path) -> None:
    """With the region reweighting off, the recorded errors average to the step's own ``loss_diffusion``."""
    net, s = run.NETWORKS["stage1"], run.Settings(eval_clips=2, eval_batch=2)
    folder = clips.write_probe_shards(tmp_path / "s1", net.clips, 2)
    module = run.build_module(1, s, 0, "cpu")
    module.loss_config = dataclasses.replace(module.loss_config, alpha=0.0)
    batch = next(iter(run.datamodule(net, folder, folder, s, 2, 0).val_dataloader()))
    whole, err = run.step_errors(module, batch, 5)
    assert err.shape == (2, 1, 4, 8, 12) and err.mean().item() == pytest.approx(whole, rel=1e-5)
    again, err2 = run.step_errors(module, batch, 5)
    assert again == whole and torch.equal(err, err2)  # same seed, same noise: the pairing the gaps rely on
    assert "target" not in vars(module.schedule)  # the recording is undone


def test_tiny_vae_scale_gives_unit_latents_on_the_sample_clips() -> None:
    """The registry's tiny factor against the std measured on the committed sample videos."""
    frames = calibrate.sample_frames(every=20)
    stds = np.array(calibrate.latent_stds(seeds=4, frames=frames)) * SIZES["tiny"].vae["scaling_factor"]
    assert 0.6 < np.median(stds) < 1.6 and stds.min() > 0.4 and stds.max() < 2.0


@pytest.mark.parametrize("make", [lambda: PoseEncoder(3, 4, SIZES["tiny"].pose_channels).body,
                                  lambda: HandEncoder(SIZES["tiny"].hand_channels, 32).body])
def test_condition_encoders_respond_to_their_input_at_init(make) -> None:
    """The conv stacks pass their input on at init: the input-dependent part of the output is not
    swamped by a constant (with PyTorch's default init it was ~1000x smaller than the constant)."""
    torch.manual_seed(0)
    body = make()
    maps = (torch.rand(8, 3, 64, 64) < 0.05).float()  # sparse drawings, like skeleton maps
    with torch.no_grad():
        out = body(maps)
    varying = out.std(0).mean()  # across inputs
    constant = out.mean(0).abs().mean()
    assert varying > 0.3 * constant and varying > 1e-2


@pytest.mark.probe
@pytest.mark.xfail(strict=True, reason="open: the reference, pose-aligned reference, hand clarity, identity crops "
                   "(and audio, on the CPU budget) do not pass yet (PROBES.md, 'Open'); strict: a pass must "
                   "remove this mark")
def test_conditions_are_learned(tmp_path: Path) -> None:
    """The CPU suite at its default size, one seed: every probe passes, the overfit test too."""
    report = run.run("cpu", "tiny", 1, tmp_path)
    bad = [r["condition"] for r in report["table"] if r["verdict"] != "pass"]
    assert not bad, run.format_table(report["table"], report["overfit"])
    assert report["overfit"]["verdict"] == "pass"


def test_audio_check_oracle_features_carry_each_frames_sound() -> None:
    """The oracle of ``audio_check`` has the features' shape and tells the three sounds apart in every frame."""
    from benchmarks.probes import audio_check

    module = run.build_module(2, run.PRESETS["tiny"], 0, "cpu")
    enc = module.model.audio
    levels = np.array([0, 1, 2, 2, 0, 1])
    wave = torch.from_numpy(clips.frame_sounds(levels, np.random.default_rng(3)))[None]
    got = audio_check.oracle_features(enc, wave, len(levels))
    assert got.shape == enc.features(wave, len(levels)).shape
    first = got[0, :, 0, :3]  # (F, 3): RMS, energy at each tone
    assert (first[levels == 0, 0] < first[levels > 0, 0].min()).all()  # quiet noise is quietest
    assert (first[levels == 1, 1] > first[levels == 2, 1].max()).all()  # the low tone shows at 300 Hz
    assert (first[levels == 2, 2] > first[levels == 1, 2].max()).all()  # the high tone at 2400 Hz


def test_band_energy_stand_in_is_time_local_and_keeps_the_product_projection() -> None:
    """The probes' stand-in audio features: frame i reads only its own samples, tell the sounds apart,
    and the stage-2 network keeps the product's trainable projection behind them."""
    from benchmarks.probes import audio_check
    from benchmarks.probes.audio_encoder import BandEnergyAudio

    module = run.build_module(2, run.PRESETS["tiny"], 0, "cpu")
    enc = module.model.audio
    assert isinstance(enc, BandEnergyAudio) and module.model.audio is enc
    assert all(p.requires_grad for p in enc.proj.parameters())
    assert not any(p.requires_grad for p in enc.wav2vec2.parameters())
    plain = run.build_module(2, dataclasses.replace(run.PRESETS["tiny"], audio="wav2vec2"), 0, "cpu")
    assert type(plain.model.audio) is not BandEnergyAudio

    levels = np.array([0, 1, 2, 2, 0, 1])
    wave = torch.from_numpy(clips.frame_sounds(levels, np.random.default_rng(3)))[None]
    per = wave.shape[1] // len(levels)
    other = wave.clone()
    other[:, 3 * per : 4 * per] = torch.from_numpy(clips.frame_sounds(np.array([0]), np.random.default_rng(4)))
    a, b = enc.features(wave, len(levels)), enc.features(other, len(levels))
    assert a.shape == plain.model.audio.features(wave, len(levels)).shape
    changed = (a - b).abs().flatten(2).amax(-1)[0]  # (F,)
    assert changed[3] > 0.5 and changed[[0, 1, 2, 4, 5]].max() < 0.1 * changed[3]  # only via the clip's normalisation
    assert audio_check.readout(clips_n=40, audio="bands")["nearest_mean_accuracy"] > 0.95


@pytest.mark.parametrize("bad, message", [({"audio": "mfcc"}, "audio features"), ({"steps": (3, 3)}, "one value per"),
                                          ({"jobs": 0}, ">= 1")])
def test_bad_settings_fail_before_anything_runs(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(run.PRESETS["tiny"], **bad)


def test_table_counts_the_seeds_whose_gap_is_above_their_measurement_noise() -> None:
    """``seeds_above_noise``: gap > 2 x that seed's paired standard error; the verdict reads the gaps only."""
    def seed(rel: float, se: float) -> dict:
        one = {"rel_gap_used": rel, "gap_used": rel, "rel_gap": rel, "rel_gap_se": se}
        return {"probes": {p.name: one for p in run.PROBES if p.network == "stage1"}}

    results = [{"network": "stage1", "per_seed": [seed(0.05, 0.01), seed(0.01, 0.01), seed(0.0, 0.001)]}]
    row = next(r for r in run.table(results) if r["condition"] == "reference")
    assert row["seeds_above_noise"] == 1 and row["per_seed_se"] == [0.01, 0.01, 0.001]
    assert row["verdict"] == "weak"  # one seed at zero: not every seed's gap is above zero
    assert "1/3" in run.format_table([row], None)


def test_reference_check_watches_the_attention_without_changing_it(tmp_path: Path) -> None:
    """The spy of ``reference_check`` records each reference-attention layer and returns the plain output."""
    from benchmarks.probes import reference_check

    net, s = run.NETWORKS["stage1"], run.Settings(eval_clips=2, eval_batch=2)
    folder = clips.write_probe_shards(tmp_path / "s1", net.clips, 2)
    module = run.build_module(1, s, 0, "cpu")
    for name, mod in module.model.unet.named_modules():
        if hasattr(mod, "to_q"):
            mod.probe_name = name
    batch = next(iter(run.datamodule(net, folder, folder, s, 2, 0).val_dataloader()))
    _, plain = run.step_errors(module, batch, 5)
    stats: dict = {}
    with reference_check.watching(stats):
        _, watched = run.step_errors(module, batch, 5)
    assert torch.equal(plain, watched) and len(stats) == 4  # tiny: four spatial self-attentions read the reference
    for layer in stats.values():
        assert 0 < layer["mass"] < 1 and 0 < layer["entropy"] <= 1 + 1e-6 and layer["value_spread"] > 0
    probe = next(p for p in run.PROBES if p.name == "reference")
    m = reference_check.measure(module, batch, probe)
    assert m["prediction_change"] > 0 and set(m["layers"]) == set(stats)  # at init a shuffle moves the prediction
