"""The conditions contract: training and generation build the same conditions for the same clip and frames.

A still clip (every frame the same photo, so the validation view's crop and movement box are the
reference's) goes through the training path (:func:`make_stage2_sample`, deterministic view) and
through the generation path (:func:`prepare_reference` -> :func:`generation_clip` ->
:func:`segment_conditions`) for the same target frames; every field must be identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cyberhost.data.buckets import BucketConfig
from cyberhost.data.conditions import (
    CONDITION_FIELDS,
    Conditions,
    check_conditions,
    make_stage1_sample,
    make_stage2_sample,
)
from cyberhost.data.shards import decode_frames, encode_clip
from cyberhost.data.transforms import TransformConfig
from cyberhost.inference.conditions import generation_clip, prepare_reference, segment_conditions

from .conftest import FixedBackend
from .test_training_parity import FPS, FRAMES, MOTION, _still_clip

SIZE = (64, 64)


@pytest.mark.parametrize("mode", ["audio", "video", "multimodal"])
def test_training_and_generation_build_identical_conditions(photo: np.ndarray, photo_keypoints: np.ndarray,
                                                            mode: str) -> None:
    tcfg = TransformConfig(num_frames=FRAMES, num_motion=MOTION, fps=FPS, mode=mode)
    raw = encode_clip(_still_clip(photo, photo_keypoints, FRAMES + MOTION))
    image = decode_frames(raw, [0])[0]  # the pixels training sees (after JPEG)
    train = Conditions.from_batch(make_stage2_sample(raw, SIZE, tcfg, None))
    check_conditions(train)

    ref = prepare_reference(image, FixedBackend(photo_keypoints), tcfg, BucketConfig(area=64 * 64, multiple=64), SIZE)
    clarity = ref.clarity  # what the still clip measured (NaN = absent, as in training)
    audio = _still_clip(photo, photo_keypoints, FRAMES + MOTION)["audio"]
    driving = None if mode == "audio" else np.repeat(ref.keypoints[None], 2 * FRAMES + MOTION, axis=0)
    clip = generation_clip(ref, 2 * FRAMES + MOTION, clarity, audio, driving)
    gen = segment_conditions(ref, clip, MOTION, FRAMES, tcfg)  # the same target frames as the training sample
    check_conditions(gen)

    compared = [n for n in CONDITION_FIELDS if n not in ("motion", "motion_from_reference")]
    for name in compared:
        a, b = getattr(train, name), getattr(gen, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 if a.is_floating_point() else 0, msg=name)
    assert train.motion.shape[0] == MOTION and gen.motion.shape[0] == 0  # generation supplies motion latents itself


def test_absent_regions_are_masks_not_nan() -> None:
    """A hand and the face missing from the keypoints: zeros plus False flags everywhere, no NaN anywhere."""
    from benchmarks.synthetic import make_clip
    from cyberhost.data import regions

    tcfg = TransformConfig(num_frames=4, num_motion=2, fps=FPS)

    def conditions(clip: dict) -> Conditions:
        return Conditions.from_batch(make_stage2_sample(encode_clip(clip), SIZE, tcfg, None))

    clip = make_clip("figure-0000", num_frames=8)
    full = conditions(clip)
    assert full.hand_crops_valid.all() and full.face_crop_valid  # the figure shows both hands and a face
    kps = clip["keypoints"].copy()
    kps[:, 91:112, 2] = 0.0  # the left hand is not detected
    kps[:, 23:91, 2] = 0.0  # nor the face
    w, h = clip["width"], clip["height"]
    clip.update(keypoints=kps, hand_boxes=regions.hand_boxes(kps, (w, h)), face_box=regions.face_boxes(kps, (w, h)))
    clip["hand_clarity"] = regions.hand_clarity(clip["frames"], clip["hand_boxes"])
    cond = conditions(clip)
    for name, value in cond.to_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
    assert not cond.hand_crops_valid[0] and cond.hand_crops_valid[1] and not cond.face_crop_valid
    assert not cond.hand_clarity_valid[:, 0].any() and (cond.hand_clarity[:, 0] == 0).all()
    assert cond.hand_clarity_valid[:, 1].all()
    assert not cond.hand_boxes_valid[:, 0].any() and not cond.keypoints_valid[:, 91:112].any()
    assert (cond.hand_crops[0] == 0).all()  # a black crop, but flagged invalid: the model masks it out
    assert (cond.face_crop == 0).all() and not cond.face_box_valid.any()


def test_movement_box_spans_the_same_frames_in_both_stages() -> None:
    """Stage 1's movement box is the thorax range over ``num_frames`` frames holding the target, as stage 2's."""
    from cyberhost.data.conditions import choose_frames

    cfg = TransformConfig(num_frames=12, num_motion=4, min_gap=1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        one = choose_frames(50, 1, cfg, rng)
        two = choose_frames(50, 2, cfg, rng)
        assert len(one.span) == len(two.span) == cfg.num_frames
        assert one.targets[0] in one.span and list(one.span) == list(range(one.span[0], one.span[0] + 12))
        assert two.span == two.targets
    short = choose_frames(5, 1, cfg, rng)
    assert short.span == tuple(range(5))  # a clip shorter than the span: all of it


def test_movement_box_follows_the_span(photo: np.ndarray, photo_keypoints: np.ndarray) -> None:
    """A thorax that moves only outside the target's span leaves the stage-1 box as small as a still one."""
    clip = _still_clip(photo, photo_keypoints, 40)
    clip["thorax"][:10] += np.array([30.0, 0.0], np.float32)  # moves in frames 0-9 only
    cfg = TransformConfig(num_frames=12, num_motion=4)
    raw = encode_clip(clip)
    sample = make_stage1_sample(raw, SIZE, cfg, None)  # validation view: target = last frame, span = frames 28-39
    still = make_stage1_sample(encode_clip(_still_clip(photo, photo_keypoints, 40)), SIZE, cfg, None)
    assert torch.equal(sample["driving_map"], still["driving_map"])


def test_motion_frames_become_the_reference_at_the_configured_rate(photo: np.ndarray,
                                                                   photo_keypoints: np.ndarray) -> None:
    cfg = TransformConfig(num_frames=4, num_motion=2, fps=FPS, p_motion_reference=0.5)
    clip = _still_clip(photo, photo_keypoints, 8)
    clip["frames"][1:] = 255 - clip["frames"][1:]  # motion frames differ from the reference (frame 0)
    raw = encode_clip(clip)
    hits, n = 0, 200
    for i in range(n):
        s = make_stage2_sample(raw, SIZE, cfg, np.random.default_rng(i))
        if bool(s["motion_from_reference"]):
            hits += 1
            assert torch.equal(s["motion"], s["reference"][None].expand_as(s["motion"]))
    assert 0.4 < hits / n < 0.6


def test_bad_transform_settings_fail_early() -> None:
    with pytest.raises(ValueError, match="mode"):
        TransformConfig(mode="dance")
    with pytest.raises(ValueError, match="p_drop_audio"):
        TransformConfig(p_drop_audio=1.5)
    with pytest.raises(ValueError, match="crop_focus"):
        dataclasses.replace(TransformConfig(), crop_focus="hands")



def test_a_nan_condition_is_refused_by_name() -> None:
    """NaN stops at the shard: a condition holding one (an absent value without its mask) is refused."""
    from benchmarks.synthetic import make_clip

    tcfg = TransformConfig(num_frames=4, num_motion=2, fps=FPS)
    good = Conditions.from_batch(make_stage2_sample(encode_clip(make_clip("figure-0000", num_frames=8)), SIZE, tcfg, None))
    check_conditions(good)
    bad = dataclasses.replace(good, hand_clarity=torch.full_like(good.hand_clarity, float("nan")))
    with pytest.raises(ValueError, match="'hand_clarity' holds NaN"):
        check_conditions(bad)
