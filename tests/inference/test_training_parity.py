"""Generation feeds the network exactly what training feeds it for the same reference and audio.

A clip whose 16 frames are all the same photo (so every choice of training's validation view is
the reference itself) goes through the stage-2 training path (:func:`make_stage2_sample` ->
``Stage2Module.conditions``) and through :func:`generate_video`; the inputs reaching
``encode_reference`` and the network's ``forward`` must agree: value ranges ([-1, 1] images,
[0, 1] maps), crops, movement box, hand clarity and the audio tokens of the window.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from cyberhost.data import regions
from cyberhost.data.buckets import BucketConfig
from cyberhost.data.conditions import make_stage2_sample
from cyberhost.data.shards import decode_frames, encode_clip
from cyberhost.data.transforms import TransformConfig
from cyberhost.inference import GenerateConfig, generate_video
from cyberhost.inference.loading import InferenceSettings
from cyberhost.models import CyberHost, CyberHostConfig
from cyberhost.training.stages import RANDOM_STAGE1, Stage2Module

from .conftest import FixedBackend

FPS, FRAMES, MOTION = 25.0, 12, 4


def _periodic_audio(num_frames: int) -> np.ndarray:
    """250 Hz: its 64-sample period divides 4 frames (2560 samples), so every 4-frame shift of a window is the same."""
    n = round(num_frames / FPS * 16_000)
    return (0.3 * np.sin(2 * np.pi * 250 * np.arange(n) / 16_000)).astype(np.float32)


def _still_clip(photo: np.ndarray, kps: np.ndarray, n: int) -> dict:
    h, w = photo.shape[:2]
    seq = np.repeat(kps[None], n, axis=0)
    frames = np.repeat(photo[None], n, axis=0)
    hands = regions.hand_boxes(seq, (w, h))
    track = regions.thorax(seq)
    return {
        "key": "still-0000", "frames": frames, "audio": _periodic_audio(n), "keypoints": seq,
        "face_box": regions.face_boxes(seq, (w, h)), "hand_boxes": hands,
        "hand_clarity": regions.hand_clarity(frames, hands), "thorax": track,
        "movement_range": regions.movement_range(track), "fps": FPS, "source": "still.mp4", "start": 0.0,
        "end": n / FPS, "width": w, "height": h, "num_frames": n, "backend": "fixed",
    }  # fmt: skip


class _Spy:
    """Records the arguments of the first ``encode_reference`` and the first ``plan`` of a network (every
    forward plans: training's ``forward`` and sampling's first step of a segment)."""

    def __init__(self, model: CyberHost) -> None:
        self.ref: dict | None = None
        self.fwd: dict | None = None
        encode, plan = model.encode_reference, model.plan
        enc_sig = inspect.signature(type(model).encode_reference.__get__(model))
        plan_sig = inspect.signature(type(model).plan.__get__(model))

        def spy_encode(*args, **kwargs):
            if self.ref is None:
                self.ref = dict(enc_sig.bind(*args, **kwargs).arguments)
            return encode(*args, **kwargs)

        def spy_plan(*args, **kwargs):
            if self.fwd is None:
                self.fwd = dict(plan_sig.bind(*args, **kwargs).arguments)
            return plan(*args, **kwargs)

        model.encode_reference, model.plan = spy_encode, spy_plan


def test_generation_conditions_match_training(photo: np.ndarray, photo_keypoints: np.ndarray) -> None:
    torch.manual_seed(0)
    module = Stage2Module(RANDOM_STAGE1, model=CyberHostConfig(size="tiny", stage=2)).eval()
    model = module.model
    tcfg = TransformConfig(num_frames=FRAMES, num_motion=MOTION, fps=FPS, p_motion_reference=0.0)
    size = (64, 64)
    raw = encode_clip(_still_clip(photo, photo_keypoints, FRAMES + MOTION))
    image = decode_frames(raw, [0])[0]  # the pixels training sees (after JPEG)

    sample = make_stage2_sample(raw, size, tcfg, None)
    batch = {k: v[None] for k, v in sample.items()}
    train = _Spy(model)
    with torch.no_grad():
        latents = module.encode(batch)
        conditions = module.conditions(batch, latents)
        model(torch.zeros_like(latents["target"]), torch.zeros(1, dtype=torch.long), **conditions)

    infer = _Spy(model)
    settings = InferenceSettings(model=model.config, transform=tcfg, buckets=BucketConfig(area=64 * 64, multiple=64))
    generate_video(model, image, _periodic_audio(FRAMES), None, settings=settings,
                   config=GenerateConfig(steps=1, hand_clarity="reference", batch_cfg=False), backend=FixedBackend(photo_keypoints),
                   progress=False)  # fmt: skip

    for name in ("ref_latents", "ref_skeleton", "face", "hand_crops"):
        a, b = train.ref[name], infer.ref[name]
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)
    assert 0 <= float(infer.ref["ref_skeleton"].min()) and float(infer.ref["ref_skeleton"].max()) <= 1
    assert float(infer.ref["face"].min()) < 0  # an image in [-1, 1], not a map in [0, 1]
    torch.testing.assert_close(infer.fwd["driving_map"], train.fwd["driving_map"], rtol=0, atol=1e-6)
    torch.testing.assert_close(infer.fwd["audio_tokens"], train.fwd["audio_tokens"], rtol=1e-5, atol=1e-5)
    seen, measured = infer.fwd["hand_clarity"], train.fwd["hand_clarity"]
    present = train.fwd["hand_clarity_valid"]
    torch.testing.assert_close(seen[present], measured[present], rtol=1e-5, atol=1e-4)
    assert torch.isfinite(seen).all() and torch.isfinite(measured).all()  # value + mask, never NaN
