"""Probe clips: synthetic clips whose targets depend on each condition in a known way.

Every clip is a drawn figure (head, striped torso, two arms, two hands) on a flat background,
written as real shards through :class:`cyberhost.data.shards.ClipShardWriter` (the layout of
:func:`benchmarks.synthetic.make_clip`, whose metadata this reuses). Keypoints, boxes,
thorax track and hand clarity are computed from the drawing by :mod:`cyberhost.data.regions`, as
data prep computes them, so each condition reaches the network through the normal data path.

What each condition decides (and what nothing else in the sample reveals):

* **reference** (stage 1): the torso colour and stripe direction are drawn per clip; the
  target frame shows them, and among the conditions only the reference image does.
* **pose-aligned reference** (stage 1, the reference skeleton): the arms (a per-clip angle) are
  drawn only in some frames; the keypoints have them in every frame. Held-out clips hide the arms
  in the reference frame (frame 0) and show them in the target frame (the last), so there the
  skeleton map is the only source of the arm pose.
* **movement map** (stage 1): the body stands at a per-clip horizontal position (a small sway);
  the map's box marks it. The probe measures it with the reference dropped, where the box is the
  only source of the position (with the reference kept, the reference shows it too).
* **audio** (stage 2): each frame's loudness is one of 0, 0.5, 1 (independent per frame); the
  mouth height of that frame follows it. Audio is noise times that envelope.
* **motion frames** (stage 2): the background grey level ramps linearly over the clip at a
  per-clip start and slope; the motion frames (the ``MOTION`` frames before the targets) give both, the
  reference one point at an unknown time.
* **hand clarity** (stage 2): each target frame's hands are sharp (a 2-px checker) or blurred (its
  mean colour) at random; the stored clarity score is measured on the drawn frame.
* **identity crops** (stage 2): the hand colour is drawn per clip; the hands are small (2 px) in the
  first ``MOTION`` frames (the motion frames, and the reference of held-out clips) and large in the rest,
  so at the network's resolution only the 128-px hand crops show the colour.

Stage-1 clips have 8 frames; stage-2 clips have exactly ``MOTION + TARGETS`` frames, so the
training window always starts at frame 0 (random reference frame), and the held-out view is the
validation view (reference = frame 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.synthetic import make_clip
from cyberhost.data.regions import face_boxes, hand_boxes, hand_clarity, movement_range, thorax
from cyberhost.data.schema import (
    AUDIO_SAMPLE_RATE,
    FACE,
    LEFT_HAND,
    LEFT_SHOULDER,
    LEFT_WRIST,
    NOSE,
    NUM_KEYPOINTS,
    RIGHT_HAND,
    RIGHT_SHOULDER,
    RIGHT_WRIST,
)
from cyberhost.data.shards import ClipShardWriter

SIZE = (64, 96)
"""``(height, width)`` of probe frames: one tiny-bucket resolution (area 6144), so the crop is the frame."""
FPS = 25.0
MOTION, TARGETS = 2, 4
"""Stage-2 motion frames and target frames per sample."""
STAGE1_FRAMES = 8
LEFT_ELBOW, RIGHT_ELBOW = 7, 8
SKIN = (225, 185, 150)
SMALL_HAND, LARGE_HAND = 2, 7
"""Hand radius (pixels) in the first ``MOTION`` frames and in the rest of a stage-2 clip."""


@dataclass(frozen=True)
class Figure:
    """Per-clip latent variables of the drawing (each is what one condition must reveal).

    Attributes:
        cx: horizontal body position (movement map).
        torso: torso RGB (reference).
        stripes_vertical: stripe direction of the torso (reference).
        arm_angle: arm angle from the vertical, radians (reference skeleton).
        hand: hand RGB (identity crops).
        background: grey level of frame 0 and its change per frame (motion frames).
    """

    cx: float
    torso: tuple[int, int, int]
    stripes_vertical: bool
    arm_angle: float
    hand: tuple[int, int, int]
    background: tuple[float, float]


def random_figure(rng: np.random.Generator, stage: int) -> Figure:
    """The latent variables of one clip."""
    level, slope = (90.0, 0.0)
    if stage == 2:
        level = float(rng.uniform(40, 215))
        slope = float(rng.choice([-1, 1]) * rng.uniform(7, 11))
        slope = slope if 10 <= level + slope * (MOTION + TARGETS - 1) <= 245 else -slope
    return Figure(
        cx=float(rng.uniform(30, 66)), torso=tuple(int(v) for v in rng.integers(30, 235, 3)),
        stripes_vertical=bool(rng.integers(2)), arm_angle=float(rng.uniform(0.25, 1.25)),
        hand=tuple(int(v) for v in rng.integers(30, 235, 3)), background=(level, slope),
    )  # fmt: skip


def keypoints(fig: Figure, sway: float, hand_radius: float) -> np.ndarray:
    """COCO-WholeBody keypoints ``(133, 3)`` of the figure (all confident: the skeleton always has the arms)."""
    kps = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    cx = fig.cx + sway
    kps[NOSE] = [cx, 14, 1]
    ang = np.linspace(0, 2 * np.pi, FACE.stop - FACE.start, endpoint=False)
    kps[FACE] = np.stack([cx + 10 * np.cos(ang), 14 + 10 * np.sin(ang), np.ones_like(ang)], 1)
    face = FACE.start  # iBUG-68 eyes, nose tip and mouth corners, for the aligned face crop
    kps[face + 36 : face + 42, :2], kps[face + 42 : face + 48, :2] = [cx - 4, 11], [cx + 4, 11]
    kps[face + 30, :2], kps[face + 48, :2], kps[face + 54, :2] = [cx, 15], [cx - 5, 19], [cx + 5, 19]
    for side, shoulder, elbow, wrist, hand in ((1, LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST, LEFT_HAND),
                                               (-1, RIGHT_SHOULDER, RIGHT_ELBOW, RIGHT_WRIST, RIGHT_HAND)):
        sx, sy = cx + side * 12, 28.0
        wx, wy = sx + side * 12 * np.sin(fig.arm_angle), sy + 20 * np.cos(fig.arm_angle)
        kps[shoulder], kps[elbow], kps[wrist] = [sx, sy, 1], [(sx + wx) / 2, (sy + wy) / 2, 1], [wx, wy, 1]
        a = np.linspace(0, 2 * np.pi, hand.stop - hand.start, endpoint=False)
        kps[hand] = np.stack([wx + hand_radius * np.cos(a), wy + hand_radius * np.sin(a), np.ones_like(a)], 1)
    return kps


def _hand(img: np.ndarray, centre: np.ndarray, radius: int, colour: tuple[int, int, int], sharp: bool) -> None:
    """A hand disc: a 2-px checker of ``colour`` and its quarter (sharp) or their mean (blurred)."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    hi, lo = np.array(colour, np.float32), np.array(colour, np.float32) / 4
    if sharp:
        checker = ((xx // 2 + yy // 2) % 2 == 0)[..., None]
        fill = np.where(checker, hi, lo)
    else:
        fill = np.broadcast_to((hi + lo) / 2, img.shape)
    img[disc] = fill[disc].astype(np.uint8)


def draw(fig: Figure, kps: np.ndarray, frame: int, arms: bool, mouth: float, hand_radius: int,
         sharp: tuple[bool, bool], hand_colour: tuple[int, int, int] = SKIN) -> np.ndarray:
    """One frame ``(H, W, 3)`` uint8 of the figure.

    Args:
        fig: the clip's variables.
        kps: this frame's keypoints (:func:`keypoints`).
        frame: frame index (background ramp).
        arms: draw the arms (and the hands: they would give the arm pose away).
        mouth: mouth opening in ``[0, 1]``.
        hand_radius: hand disc radius.
        sharp: (left, right) hand drawn sharp.
        hand_colour: hand RGB.
    """
    h, w = SIZE
    level = float(np.clip(fig.background[0] + fig.background[1] * frame, 0, 255))
    img = np.full((h, w, 3), round(level), np.uint8)
    cx = float(kps[NOSE, 0])
    x0, x1 = round(cx - 12), round(cx + 12)
    torso = img[26:, x0:x1]
    torso[:] = fig.torso
    idx = np.arange(torso.shape[1] if fig.stripes_vertical else torso.shape[0])
    dark = (idx // 3) % 2 == 1
    if fig.stripes_vertical:
        torso[:, dark] = np.array(fig.torso) // 3
    else:
        torso[dark] = np.array(fig.torso) // 3
    if arms:
        for s, wr in ((LEFT_SHOULDER, LEFT_WRIST), (RIGHT_SHOULDER, RIGHT_WRIST)):
            a, b = kps[s, :2], kps[wr, :2]
            cv2.line(img, (round(a[0]), round(a[1])), (round(b[0]), round(b[1])), (245, 245, 245), 4)
        for i, wr in enumerate((LEFT_WRIST, RIGHT_WRIST)):
            _hand(img, kps[wr, :2], hand_radius, hand_colour, sharp[i])
    cv2.circle(img, (round(cx), 14), 10, SKIN, -1)
    if mouth > 0:
        img[17 : 17 + round(7 * mouth), round(cx - 6) : round(cx + 6)] = (60, 10, 10)
    return img


def _record(key: str, frames: np.ndarray, kps: np.ndarray, audio: np.ndarray) -> dict[str, Any]:
    """A schema-valid clip dict: ``make_clip``'s metadata with these frames, keypoints and audio."""
    n = len(frames)
    clip = make_clip(key, num_frames=n, size=SIZE, fps=FPS)
    h, w = SIZE
    track = thorax(kps)
    hands = hand_boxes(kps, (w, h))
    clip.update(frames=frames, audio=audio.astype(np.float32), keypoints=kps, face_box=face_boxes(kps, (w, h)),
                hand_boxes=hands, hand_clarity=hand_clarity(frames, hands), thorax=track,
                movement_range=movement_range(track), backend="probe")
    return clip


def stage1_clip(key: str, seed: int, held_out: bool = False) -> dict[str, Any]:
    """A stage-1 probe clip (reference, reference skeleton, movement map).

    Args:
        key: sample key.
        seed: randomness of the figure and of which frames show the arms.
        held_out: frame 0 hides the arms and the last frame shows them (the validation pair).
    """
    rng = np.random.default_rng(seed)
    fig = random_figure(rng, 1)
    arms = rng.uniform(size=STAGE1_FRAMES) < 0.5
    if held_out:
        arms[0], arms[-1] = False, True
    sway = rng.uniform(-1.5, 1.5, STAGE1_FRAMES)
    kps = np.stack([keypoints(fig, s, 3) for s in sway])
    frames = np.stack([draw(fig, k, i, bool(a), 0.0, 3, (False, False)) for i, (k, a) in enumerate(zip(kps, arms, strict=True))])
    audio = np.zeros(round(STAGE1_FRAMES / FPS * AUDIO_SAMPLE_RATE), np.float32)
    return _record(key, frames, kps, audio)


def envelope_audio(env: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise whose loudness in each video frame is ``0.02 + env[frame]`` (16 kHz)."""
    per = round(AUDIO_SAMPLE_RATE / FPS)
    gain = np.repeat(0.02 + env, per)
    return (0.3 * gain * rng.standard_normal(len(gain))).astype(np.float32)


def stage2_clip(key: str, seed: int, num_frames: int = MOTION + TARGETS) -> dict[str, Any]:
    """A stage-2 probe clip (audio, motion frames, hand clarity, identity crops).

    Args:
        key: sample key.
        seed: randomness of the figure, the audio envelope and the hand sharpness.
        num_frames: frames (the overfit test uses a longer clip for continuation).
    """
    rng = np.random.default_rng(seed)
    fig = random_figure(rng, 2)
    env = rng.choice([0.0, 0.5, 1.0], num_frames)
    sharp = rng.uniform(size=(num_frames, 2)) < 0.5
    radius = np.where(np.arange(num_frames) < MOTION, SMALL_HAND, LARGE_HAND)
    sway = rng.uniform(-1.0, 1.0, num_frames)
    kps = np.stack([keypoints(fig, s, r) for s, r in zip(sway, radius, strict=True)])
    frames = np.stack([draw(fig, kps[i], i, True, env[i], int(radius[i]), tuple(sharp[i]), fig.hand)
                       for i in range(num_frames)])
    return _record(key, frames, kps, envelope_audio(env, rng))


def sub_clip(clip: dict[str, Any], start: int, num_frames: int) -> dict[str, Any]:
    """Frames ``start .. start + num_frames`` of a clip as a clip of its own (the overfit test's second segment)."""
    stop = start + num_frames
    per = round(AUDIO_SAMPLE_RATE / FPS)
    out = dict(clip, key=clip["key"].replace("-", "c-", 1), num_frames=num_frames, start=start / FPS, end=stop / FPS)
    for name in ("frames", "keypoints", "face_box", "hand_boxes", "hand_clarity", "thorax"):
        out[name] = clip[name][start:stop]
    out["audio"] = clip["audio"][start * per : stop * per]
    out["movement_range"] = movement_range(out["thorax"])
    return out


def write_clips(directory: str | Path, records: list[dict[str, Any]], clips_per_shard: int = 16) -> Path:
    """Write clip dicts as committed shards (one input per shard) with :class:`ClipShardWriter`."""
    directory = Path(directory)
    for shard in range(0, len(records), clips_per_shard):
        part = records[shard : shard + clips_per_shard]
        with ClipShardWriter(directory, shard_index=shard // clips_per_shard, quality=95) as writer:
            for clip in part:
                writer.write(clip)
            writer.finish_input({"file": f"probe/{shard}.mp4", "status": "ok", "reason": "", "clips": len(part)})
    return directory


def write_probe_shards(directory: str | Path, stage: int, num_clips: int, seed: int = 0,
                       held_out: bool = False) -> Path:
    """Write ``num_clips`` probe clips of one stage as committed shards (clip ``i`` uses ``seed + i``).

    Args:
        directory: output folder (created).
        stage: 1 or 2.
        num_clips: clips in total.
        seed: base seed.
        held_out: stage 1: the held-out arrangement of :func:`stage1_clip`.

    Returns:
        The folder.
    """
    keys = [f"probe{stage}s{seed + i:06d}-0000" for i in range(num_clips)]
    records = [stage1_clip(k, seed + i, held_out) if stage == 1 else stage2_clip(k, seed + i) for i, k in enumerate(keys)]
    return write_clips(directory, records)
