"""Video-driven and multimodal modes: the driving keypoints reach the network where the movement map does."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from benchmarks.synthetic import make_clip
from cyberhost.data import maps
from cyberhost.data.schema import HANDS, LEFT_SHOULDER, RIGHT_SHOULDER
from cyberhost.inference import GenerateConfig, NoPersonError, generate_video
from cyberhost.inference.conditions import prepare_reference
from cyberhost.inference.driving import align_to_reference, source_indices

from .conftest import FixedBackend, build_model
from .conftest import settings_for as _settings_for


def settings_for(model, mode: str = "audio"):  # noqa: ANN001, ANN201
    """Generation settings of a network trained for ``mode`` (``transform.mode`` of its training run)."""
    import dataclasses

    settings = _settings_for(model)
    return dataclasses.replace(settings, transform=dataclasses.replace(settings.transform, mode=mode))


def _box(ref) -> np.ndarray:  # noqa: ANN001
    """The reference's fixed movement map ``(H, W, 3)`` (audio-mode conditions of the reference)."""
    return ref.conditions.driving_map[0].permute(1, 2, 0).numpy()


def _capture_driving_map(model) -> list[torch.Tensor]:
    """The driving map of every forward the network plans (training's ``forward`` and sampling's segments)."""
    seen: list[torch.Tensor] = []
    plan, signature = model.plan, inspect.signature(model.plan)

    def spy(*args, **kwargs):
        seen.append(signature.bind(*args, **kwargs).arguments["driving_map"].clone())
        return plan(*args, **kwargs)

    model.plan = spy
    return seen


def _driving(photo, photo_keypoints, frames: int = 10):
    clip = make_clip("drive-0000", num_frames=frames, size=(96, 80), seed=1)
    table = {np.ascontiguousarray(f).tobytes(): k for f, k in zip(clip["frames"], clip["keypoints"], strict=True)}
    return clip, FixedBackend(photo_keypoints, table)


def test_video_mode_feeds_the_driving_skeleton(photo, photo_keypoints) -> None:
    model = build_model()
    settings = settings_for(model, "video")
    clip, backend = _driving(photo, photo_keypoints)
    seen = _capture_driving_map(model)
    audio = np.zeros(round(0.4 * 16_000), np.float32)  # 10 frames, one segment
    generate_video(model, photo, audio, None, settings=settings, config=GenerateConfig(mode="video", steps=1),
                   backend=backend, driving=(clip["frames"], 25.0), progress=False)
    driving = seen[0][0]  # (F, 3, H, W) in [0, 1], as training feeds it
    assert all(torch.equal(m, seen[0]) for m in seen)  # the same maps at every step and CFG branch
    images = (driving * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    ref = prepare_reference(photo, backend, settings_for(model).transform, settings.buckets)
    box = _box(ref)
    assert not np.array_equal(images[0], box)
    assert len(np.unique(images[0].reshape(-1, 3), axis=0)) > 3  # coloured limbs, not a white box
    # frames past the driving video hold its last frame
    assert np.array_equal(images[10], images[9]) and np.array_equal(images[11], images[9])
    # independent of the crop: crop + alignment is one similarity taking the driving figure's first thorax and
    # shoulder width onto the reference's, so each map is the driving skeleton under that similarity
    k0, r = clip["keypoints"][0], ref.keypoints
    scale = (np.hypot(*(r[LEFT_SHOULDER, :2] - r[RIGHT_SHOULDER, :2]))
             / np.hypot(*(k0[LEFT_SHOULDER, :2] - k0[RIGHT_SHOULDER, :2])))
    centre_d, centre_r = (k0[LEFT_SHOULDER, :2] + k0[RIGHT_SHOULDER, :2]) / 2, (r[LEFT_SHOULDER, :2] + r[RIGHT_SHOULDER, :2]) / 2
    for i in (0, 4, 9):
        kps = clip["keypoints"][i].copy()
        kps[:, :2] = (kps[:, :2] - centre_d) * scale + centre_r
        expected = maps.draw_skeleton(kps, (64, 64), settings.transform.min_confidence)
        assert (images[i] != expected).any(-1).mean() < 0.01
    assert not np.array_equal(images[0], images[4])  # the figure moves


def test_alignment_puts_driving_thorax_on_reference() -> None:
    ref = np.zeros((133, 3), np.float32)
    ref[LEFT_SHOULDER], ref[RIGHT_SHOULDER] = [40, 30, 1], [20, 30, 1]
    seq = np.zeros((2, 133, 3), np.float32)
    seq[:, LEFT_SHOULDER], seq[:, RIGHT_SHOULDER] = [[110, 50, 1], [112, 50, 1]], [[100, 50, 1], [102, 50, 1]]
    out = align_to_reference(seq, ref, 0.3)
    assert out[0, LEFT_SHOULDER, :2].tolist() == [40, 30] and out[0, RIGHT_SHOULDER, :2].tolist() == [20, 30]
    assert out[1, LEFT_SHOULDER, 0] == pytest.approx(44)  # a 2-px move at half the scale is 4 px at the reference's
    assert source_indices(5, 25.0, 50.0, 6).tolist() == [0, 2, 4, 5, 5]


def test_multimodal_draws_driving_hands_over_the_box(photo, photo_keypoints) -> None:
    model = build_model()
    settings = settings_for(model, "multimodal")
    clip, backend = _driving(photo, photo_keypoints)
    seen = _capture_driving_map(model)
    generate_video(model, photo, np.zeros(round(0.4 * 16_000), np.float32), None, settings=settings,
                   config=GenerateConfig(mode="multimodal", steps=1), backend=backend,
                   driving=(clip["frames"], 25.0), progress=False)
    images = (seen[0][0] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    box = _box(prepare_reference(photo, backend, settings_for(model).transform, settings.buckets))
    drawn = images[0] != box
    assert drawn.any()  # hand bones added
    white = (box == 255).all(-1)
    assert (images[0][white & ~drawn.any(-1)] == 255).all()  # the box is kept where no bone is
    body_only = clip["keypoints"][0].copy()
    body_only[HANDS, 2] = 0
    assert maps.draw_skeleton(body_only, (64, 64)).any()  # (the body exists but is not drawn)


def test_reference_without_person_is_named(photo) -> None:
    model = build_model()
    with pytest.raises(NoPersonError, match=r"reference image <array>"):
        generate_video(model, photo, np.zeros(1600, np.float32), None, settings=settings_for(model),
                       config=GenerateConfig(steps=1), backend=FixedBackend(None), progress=False)


def test_driving_video_person_missing_is_named(photo, photo_keypoints) -> None:
    model = build_model()
    frames = np.full((3, 32, 32, 3), 7, np.uint8)

    class PhotoOnly(FixedBackend):
        def __call__(self, frame: np.ndarray) -> np.ndarray:
            return super().__call__(frame) if frame.shape == photo.shape else np.zeros((0, 133, 3), np.float32)

    with pytest.raises(NoPersonError, match="driving video"):
        generate_video(model, photo, np.zeros(1600, np.float32), None, settings=settings_for(model, "video"),
                       config=GenerateConfig(mode="video", steps=1), backend=PhotoOnly(photo_keypoints),
                       driving=(frames, 25.0), progress=False)


class _ContentBackend(FixedBackend):
    """Keypoints that follow a frame's content (so a decoded, lossy video still drives a moving figure)."""

    def __init__(self, reference: np.ndarray, base: np.ndarray) -> None:
        super().__init__(reference)
        self.base = base

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape[0] > 200:  # the reference photo
            return super().__call__(frame)
        kps = self.base.copy()
        blue = frame[..., 2].mean() - 121  # about -2..+2 over the clip
        kps[:, 0] += 2 * blue
        kps[HANDS, 1] += 4 * blue
        return kps[None]


def _whole_video_maps(path, ref, backend, transform, fps: float, total: int, mode: str) -> torch.Tensor:
    """The previous behaviour: decode the whole driving video, detect, crop, align, draw every map."""
    from cyberhost.data import regions
    from cyberhost.data.transforms import choose_crop, map_points, person_box
    from cyberhost.inference.conditions import detect_person
    from cyberhost.media import read_video

    mc = transform.min_confidence
    frames, src_fps = read_video(path)
    index = source_indices(total, fps, src_fps or fps, len(frames))
    backend.reset()
    found = {int(j): detect_person(frames[j], backend, mc) for j in np.unique(index)}
    seq = np.stack([found[int(j)] for j in index])
    clip = {"keypoints": seq, "face_box": regions.face_boxes(seq, None), "hand_boxes": regions.hand_boxes(seq, None),
            "width": frames.shape[2], "height": frames.shape[1]}
    crop = choose_crop(frames.shape[1:3], ref.size, person_box(clip, list(range(len(seq))), mc), transform, None)
    seq[..., :2] = map_points(seq[..., :2], crop, ref.size)
    out = []
    for kps in align_to_reference(seq, ref.keypoints, mc):
        if mode == "video":
            out.append(maps.draw_skeleton(kps, ref.size, mc))
        else:
            hands = np.zeros_like(kps)
            hands[HANDS] = kps[HANDS]
            bones = maps.draw_skeleton(hands, ref.size, mc)
            out.append(np.where(bones.any(-1, keepdims=True), bones, _box(ref)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("mode", "fps"), [("video", 30.0), ("multimodal", 60.0)])
def test_streamed_driving_video_equals_whole_video(tmp_path, photo, photo_keypoints, monkeypatch, mode, fps) -> None:
    # the driving video ends before the audio; at 60 fps its last frame is not one an output frame shows,
    # yet it is the one held for the rest
    from cyberhost.media import video as media_video
    from cyberhost.media import write_video

    clip = make_clip("drive-0001", num_frames=14, size=(96, 80), seed=2)
    path = tmp_path / "drive.mp4"
    write_video(path, clip["frames"], fps)
    model = build_model()
    settings = settings_for(model, mode)
    backend = _ContentBackend(photo_keypoints, clip["keypoints"][0])
    audio = np.zeros(round(0.72 * 16_000), np.float32)  # 18 frames: two segments; the driving video ends first
    ref = prepare_reference(photo, backend, settings_for(model).transform, settings.buckets)
    expected = _whole_video_maps(path, ref, backend, settings.transform, 25.0, 18, mode)  # (18, 3, H, W)
    assert not torch.equal(expected[0], expected[8])  # the figure moves, so the comparison can fail
    monkeypatch.setattr(media_video, "read_video", lambda *a, **k: pytest.fail("the driving video was read whole"))
    seen = _capture_driving_map(model)
    generate_video(model, photo, audio, None, settings=settings, config=GenerateConfig(mode=mode, steps=1),
                   backend=backend, driving=path, progress=False)
    per_segment = [seen[0], seen[-1]]  # one sampling step: the first and the last call are segments 1 and 2
    got = torch.cat([(m[0] * 255).round().to(torch.uint8) for m in per_segment])  # (24, 3, H, W)
    idx = torch.arange(24).clamp_max(17)
    assert torch.equal(got, expected[idx])


def test_generate_closes_the_backend_it_builds(photo, photo_keypoints, monkeypatch) -> None:
    from cyberhost.inference import pipeline

    built: list[FixedBackend] = []

    class Recording(FixedBackend):
        def __init__(self, **_: object) -> None:
            super().__init__(None, {np.ascontiguousarray(photo).tobytes(): photo_keypoints})
            self.closed = False
            built.append(self)

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(pipeline, "MediaPipeHolistic", Recording)
    model = build_model()
    generate_video(model, photo, np.zeros(1600, np.float32), None, settings=settings_for(model),
                   config=GenerateConfig(steps=1), progress=False)
    with pytest.raises(NoPersonError):  # closed on the error path too
        generate_video(model, np.zeros((64, 64, 3), np.uint8), np.zeros(1600, np.float32), None,
                       settings=settings_for(model), config=GenerateConfig(steps=1), progress=False)
    assert len(built) == 2 and all(b.closed for b in built)


@pytest.mark.parametrize(("trained", "asked"), [("audio", "video"), ("audio", "multimodal"), ("video", "audio")])
def test_generate_refuses_a_mode_the_network_was_not_trained_for(photo, photo_keypoints, trained, asked) -> None:
    model = build_model()
    clip, backend = _driving(photo, photo_keypoints)
    with pytest.raises(Exception, match=rf"mode '{asked}' needs a network trained with transform.mode: {asked}"):
        generate_video(model, photo, np.zeros(1600, np.float32), None, settings=settings_for(model, trained),
                       config=GenerateConfig(mode=asked, steps=1), backend=backend, driving=(clip["frames"], 25.0),
                       progress=False)
