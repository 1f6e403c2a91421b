"""Sample construction checked against independent calculations: buckets, crops, frame choice,
audio alignment, condition-dropout rates."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from cyberhost.data.buckets import BucketConfig
from cyberhost.data.conditions import choose_dropout, choose_frames, make_stage1_sample, make_stage2_sample
from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.data.shards import encode_clip
from cyberhost.data.transforms import TransformConfig, choose_crop
from tests.data.synthetic import make_clip

CONF = Path(__file__).resolve().parents[2] / "conf"
GREY_STEP = 8
"""Frame i of the index clip is a flat grey of value ``GREY_STEP * i``: its index survives crop, resize and JPEG."""


def _index_clip(frames: int, fps: float, size: tuple[int, int] = (64, 48)) -> dict:
    """A clip whose frame i is grey ``8 i`` and whose audio sample j is the number j."""
    clip = make_clip("idx-0000", frames=frames, size=size, fps=fps)
    h, w = size
    clip["frames"] = np.stack([np.full((h, w, 3), GREY_STEP * i, np.uint8) for i in range(frames)])
    clip["audio"] = np.arange(len(clip["audio"]), dtype=np.float32)  # exact in float32 below 2**24
    clip["end"] = clip["start"] + frames / fps
    return clip


def _frame_index(image) -> int:  # noqa: ANN001
    return int(round(float(image.float().mean()) / GREY_STEP))


# ----------------------------------------------------------------------------- buckets


def test_stage_config_buckets_have_the_papers_area_and_sides() -> None:
    """conf/stage1.yaml's buckets vs a brute-force enumeration: area 640x384 ± 10 %, sides multiples of 64."""
    for stage in ("stage1.yaml", "stage2.yaml"):
        cfg = yaml.safe_load((CONF / stage).read_text())["data"]["init_args"]["buckets"]
        buckets = BucketConfig(**cfg).buckets()
        area = 640 * 384
        assert cfg["area"] == area and cfg["multiple"] == 64
        nearest = {}  # width -> heights (multiples of 64) nearest to area / width, when valid
        for w in range(64, 2048, 64):
            err = {h: abs(h * w - area) for h in range(64, 2048, 64)}
            best = [h for h, e in err.items() if e == min(err.values())]
            best = [h for h in best if err[h] <= 0.1 * area and max(h, w) / min(h, w) <= 2]
            if best:
                nearest[w] = best
        assert sorted(w for _, w in buckets) == sorted(nearest)  # one bucket per possible width
        assert all(h in nearest[w] for h, w in buckets)
        assert {(384, 640), (640, 384)} <= set(buckets)
        assert all(h % 64 == 0 and w % 64 == 0 and abs(h * w / area - 1) <= 0.1 for h, w in buckets)
        ratios = [w / h for h, w in buckets]
        assert ratios == sorted(ratios)


# ----------------------------------------------------------------------------- crops


def test_random_crops_keep_the_person() -> None:
    """Many random frames, buckets and person boxes: the crop has the bucket's aspect, lies in the frame
    and contains the person box whenever the largest crop of that aspect can."""
    rng = np.random.default_rng(0)
    cfg = TransformConfig(crop_scale=(0.6, 1.0))
    kept = 0
    for _ in range(2000):
        fh, fw = (int(v) for v in rng.integers(64, 1200, 2))
        bh, bw = (int(v) * 64 for v in rng.integers(3, 12, 2))
        full = min(fh / bh, fw / bw)
        ph, pw = rng.uniform(0.05, 1.1) * bh * full, rng.uniform(0.05, 1.1) * bw * full
        x0, y0 = rng.uniform(0, max(1.0, fw - pw)), rng.uniform(0, max(1.0, fh - ph))
        person = np.array([x0, y0, min(fw, x0 + pw), min(fh, y0 + ph)], np.float32)
        crop = choose_crop((fh, fw), (bh, bw), person, cfg, rng)
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        assert math.isclose(cw / ch, bw / bh, rel_tol=1e-4)
        assert crop[0] >= -1e-3 and crop[1] >= -1e-3 and crop[2] <= fw + 1e-3 and crop[3] <= fh + 1e-3
        fits = person[2] - person[0] <= bw * full and person[3] - person[1] <= bh * full
        if fits:
            kept += 1
            tol = 1e-3 * max(fh, fw)
            assert crop[0] <= person[0] + tol and crop[1] <= person[1] + tol, (crop, person)
            assert crop[2] >= person[2] - tol and crop[3] >= person[3] - tol, (crop, person)
            assert cw >= 0.6 * bw * full - tol or cw >= person[2] - person[0] - tol
    assert kept > 1000


# ----------------------------------------------------------------------------- frame choice


def test_stage1_pairs_respect_min_gap() -> None:
    rng = np.random.default_rng(1)
    cfg = TransformConfig(min_gap=8)
    choices = [choose_frames(24, 1, cfg, rng) for _ in range(3000)]
    gaps = [c.reference - c.targets[0] for c in choices]
    assert min(abs(g) for g in gaps) >= 8
    assert {g > 0 for g in gaps} == {True, False}  # the reference comes before and after the target
    assert max(abs(g) for g in gaps) == 23
    with pytest.raises(ValueError, match="no pair"):
        choose_frames(8, 1, cfg, rng)


def test_stage1_sample_frames_are_min_gap_apart() -> None:
    """End to end: the reference and target images of a sample are frames at least min_gap apart."""
    sample = encode_clip(_index_clip(20, 25.0))
    cfg = TransformConfig(min_gap=12, face_crop=32, hand_crop=32)
    seen = set()
    for seed in range(40):
        out = make_stage1_sample(sample, (32, 32), cfg, np.random.default_rng(seed))
        ref, tgt = _frame_index(out["reference"]), _frame_index(out["target"][0])
        assert abs(ref - tgt) >= 12
        seen.add((ref, tgt))
    assert len(seen) > 5


# ----------------------------------------------------------------------------- audio


@pytest.mark.parametrize(("fps", "context"), [(25.0, 0), (30.0, 0), (25.0, 2)])
def test_stage2_audio_window_matches_the_target_frames(fps: float, context: int) -> None:
    """Audio sample j of the window is clip sample ``round((t0 - context) / fps * 16000) + j``, t0 = first target."""
    clip = _index_clip(30, fps)
    sample = encode_clip(clip)
    cfg = TransformConfig(num_frames=6, num_motion=3, audio_context=context, fps=fps, face_crop=32, hand_crop=32,
                          p_motion_reference=0.0)
    total = len(clip["audio"])
    for seed in range(12):
        out = make_stage2_sample(sample, (32, 32), cfg, np.random.default_rng(seed))
        frames = [_frame_index(f) for f in (*out["motion"], *out["target"])]
        assert frames == list(range(frames[0], frames[0] + 9))  # motion frames run straight into the targets
        t0 = frames[3]
        first = round((t0 - context) / fps * AUDIO_SAMPLE_RATE)
        n = round((6 + 2 * context) / fps * AUDIO_SAMPLE_RATE)
        want = np.array([j if 0 <= j < total else 0.0 for j in range(first, first + n)], np.float32)
        np.testing.assert_array_equal(out["audio"].numpy(), want)


# ----------------------------------------------------------------------------- dropout


def test_dropout_rates_match_the_config() -> None:
    """Reference and audio are dropped independently: each case at the product of its rates."""
    cfg = TransformConfig(p_drop_reference=0.10, p_drop_audio=0.20)
    rng = np.random.default_rng(2)
    n = 20000
    draws = [choose_dropout(cfg, rng) for _ in range(n)]
    for case, p in (((True, False), 0.08), ((False, True), 0.18), ((True, True), 0.02), ((False, False), 0.72)):
        rate = sum(d == case for d in draws) / n
        assert abs(rate - p) < 4.5 * math.sqrt(p * (1 - p) / n), (case, rate, p)


def test_sample_dropout_flags_follow_the_config() -> None:
    """Through the sample path users take: the flags of many real samples, at the configured rates."""
    sample = encode_clip(_index_clip(20, 25.0))
    cfg = TransformConfig(num_frames=6, num_motion=2, p_drop_reference=0.3, p_drop_audio=0.5, face_crop=32, hand_crop=32)
    flags = np.array([[bool(out["drop_reference"]), bool(out["drop_audio"])] for out in
                      (make_stage2_sample(sample, (32, 32), cfg, np.random.default_rng(seed)) for seed in range(300))])
    assert abs(flags[:, 0].mean() - 0.3) < 0.09 and abs(flags[:, 1].mean() - 0.5) < 0.1
    assert abs((flags[:, 0] & flags[:, 1]).mean() - 0.15) < 0.07
