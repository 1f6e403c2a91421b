"""Probe clips: synthetic clips whose targets depend on each condition in a known way.

Every clip is a drawn figure (head, striped torso, two arms, two hands) on a flat background,
written as real shards through :class:`cyberhost.data.shards.ClipShardWriter` with the schema's
arrays (:mod:`cyberhost.data.schema`). Keypoints, boxes, thorax track and hand clarity are
computed from the drawing by :mod:`cyberhost.data.regions`, as data prep computes them, so each
condition reaches the network through the normal data path.

What each condition decides (and what nothing else in the sample reveals):

* **reference** (stage 1): the background grey level, the torso colour and the stripe direction
  are drawn per clip; the target frame shows them, and among the conditions only the reference
  image does.
* **pose-aligned reference** (stage 1, the reference skeleton): the arms (hanging or raised, at a
  per-clip angle) are
  drawn in frame 1 and hidden in frame 0 of a two-frame clip; the keypoints, and so the skeleton
  map, always have them. A stage-1 pair is (0 -> 1) or (1 -> 0): when the reference image shows
  no arms the target shows them, and only the reference skeleton says where. (With the arms
  visible in the reference image too, the skeleton would repeat what the image shows and no
  probe could tell whether it is read.) Held-out pairs are (0 -> 1).
* **movement map** (stage 1): the body stands at a per-clip horizontal position (a small sway);
  the map's box marks it. The probe measures it with the reference dropped, where the box is the
  only source of the position (with the reference kept, the reference shows it too).
* **audio** (stage 2): each frame's sound is one of quiet noise, a 300 Hz tone, a 2400 Hz tone
  (independent per frame); the height of that frame's (wide) mouth box follows it: closed, half
  open, open (:func:`frame_sounds` says why the kind of sound, not its loudness).
* **motion frames** (stage 2): the background grey level ramps linearly over the clip at a
  per-clip start and slope; the motion frames (the ``MOTION`` frames before the targets) give
  both, the reference one point at an unknown time.
* **hand clarity** (stage 2): each target frame's hands are sharp (a 2-px checker) or blurred
  (its mean colour) at random; the stored clarity score is measured on the drawn frame.
* **identity crops** (stage 2): the hand colour is drawn per clip; the hands are small (2 px) in
  the first ``MOTION`` frames (the motion frames, and the reference of held-out clips) and large
  in the rest, so at the network's resolution only the 128-px hand crops show the colour.
* **skeleton maps** (stage 2, video mode, ``moving_arms``): the arm angle is drawn anew in every
  frame, so only each target frame's own skeleton map says where that frame's arms are.

Stage-2 clips have exactly ``MOTION + TARGETS`` frames, so the training window always starts at
frame 0 (random reference frame), and the held-out view is the validation view (reference =
frame 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

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
STAGE1_FRAMES = 2
"""Stage-1 clips: frame 0 without arms, frame 1 with them."""
LEFT_ELBOW, RIGHT_ELBOW = 7, 8
SKIN = (225, 185, 150)
ARM_LENGTH, ARM_WIDTH = 18.0, 8
SMALL_HAND, LARGE_HAND = 2, 10
"""Hand radius (pixels) in the first ``MOTION`` frames and in the rest of a stage-2 clip."""
STAGE1_HAND = 4
ARM_ANGLES = (0.2, 1.8)
"""Range of the arm angle from hanging straight down, radians (stage 2)."""
STAGE1_ARM_ANGLES = ((0.2, 0.5), (1.4, 1.8))
"""Stage 1: arms hanging or raised (one range at random, then uniform in it): the two poses differ over
many latent pixels, so the reference skeleton's information is large."""
MOUTH_TOP, MOUTH_HALF_WIDTH, MOUTH_HEIGHT = 16, 12, 10
"""The mouth box (pixels): a wide dark box below the eyes that opens downwards to ``MOUTH_HEIGHT`` rows
(inside the face box; large on purpose, so the audio's effect covers several latent pixels)."""


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
    level, slope = float(rng.uniform(30, 225)), 0.0  # stage 1: only the reference shows the clip's level
    if stage == 2:
        level = float(rng.uniform(40, 215))
        slope = float(rng.choice([-1, 1]) * rng.uniform(7, 11))
        slope = slope if 10 <= level + slope * (MOTION + TARGETS - 1) <= 245 else -slope
    arm_range = ARM_ANGLES if stage == 2 else STAGE1_ARM_ANGLES[int(rng.integers(2))]
    return Figure(
        cx=float(rng.uniform(30, 66)), torso=tuple(int(v) for v in rng.integers(30, 235, 3)),
        stripes_vertical=bool(rng.integers(2)), arm_angle=float(rng.uniform(*arm_range)),
        hand=tuple(int(v) for v in rng.integers(30, 235, 3)), background=(level, slope),
    )  # fmt: skip


def keypoints(fig: Figure, sway: float, hand_radius: float, arm_angle: float | None = None) -> np.ndarray:
    """COCO-WholeBody keypoints ``(133, 3)`` of the figure (all confident: the skeleton always has the arms).

    Args:
        fig: the clip's variables.
        sway: horizontal offset of this frame.
        hand_radius: radius of the ring of hand points.
        arm_angle: this frame's arm angle (None: the clip's).
    """
    kps = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    cx = fig.cx + sway
    angle = fig.arm_angle if arm_angle is None else arm_angle
    kps[NOSE] = [cx, 14, 1]
    ang = np.linspace(0, 2 * np.pi, FACE.stop - FACE.start, endpoint=False)
    kps[FACE] = np.stack([cx + 10 * np.cos(ang), 14 + 10 * np.sin(ang), np.ones_like(ang)], 1)
    face = FACE.start  # iBUG-68 eyes, nose tip and mouth corners, for the aligned face crop
    kps[face + 36 : face + 42, :2], kps[face + 42 : face + 48, :2] = [cx - 4, 11], [cx + 4, 11]
    kps[face + 30, :2], kps[face + 48, :2], kps[face + 54, :2] = [cx, 15], [cx - 5, 19], [cx + 5, 19]
    for side, shoulder, elbow, wrist, hand in ((1, LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST, LEFT_HAND),
                                               (-1, RIGHT_SHOULDER, RIGHT_ELBOW, RIGHT_WRIST, RIGHT_HAND)):
        sx, sy = cx + side * 12, 28.0
        wx, wy = sx + side * ARM_LENGTH * np.sin(angle), sy + ARM_LENGTH * np.cos(angle)
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
            cv2.line(img, (round(a[0]), round(a[1])), (round(b[0]), round(b[1])), (245, 245, 245), ARM_WIDTH)
        for i, wr in enumerate((LEFT_WRIST, RIGHT_WRIST)):
            _hand(img, kps[wr, :2], hand_radius, hand_colour, sharp[i])
    cv2.circle(img, (round(cx), 14), 10, SKIN, -1)
    if mouth > 0:
        rows = round(MOUTH_HEIGHT * mouth)
        img[MOUTH_TOP : MOUTH_TOP + rows, round(cx - MOUTH_HALF_WIDTH) : round(cx + MOUTH_HALF_WIDTH)] = (60, 10, 10)
    return img


def _record(key: str, frames: np.ndarray, kps: np.ndarray, audio: np.ndarray) -> dict[str, Any]:
    """A schema-valid clip dict of these frames, keypoints and audio (regions computed as data prep does)."""
    n = len(frames)
    h, w = SIZE
    track = thorax(kps)
    hands = hand_boxes(kps, (w, h))
    return {
        "key": key, "frames": frames, "audio": audio.astype(np.float32), "keypoints": kps,
        "face_box": face_boxes(kps, (w, h)), "hand_boxes": hands, "hand_clarity": hand_clarity(frames, hands),
        "thorax": track, "movement_range": movement_range(track),
        "fps": FPS, "source": f"probe/{key}.mp4", "start": 0.0, "end": n / FPS,
        "width": w, "height": h, "num_frames": n, "backend": "probe",
    }  # fmt: skip


def stage1_clip(key: str, seed: int) -> dict[str, Any]:
    """A stage-1 probe clip (reference, reference skeleton, movement map): frame 0 hides the arms, frame 1 shows them.

    Args:
        key: sample key.
        seed: randomness of the figure and its sway.
    """
    rng = np.random.default_rng(seed)
    fig = random_figure(rng, 1)
    sway = rng.uniform(-1.5, 1.5, STAGE1_FRAMES)
    kps = np.stack([keypoints(fig, s, STAGE1_HAND) for s in sway])
    frames = np.stack([draw(fig, k, i, i > 0, 0.0, STAGE1_HAND, (False, False)) for i, k in enumerate(kps)])
    audio = np.zeros(round(STAGE1_FRAMES / FPS * AUDIO_SAMPLE_RATE), np.float32)
    return _record(key, frames, kps, audio)


SOUND_TONES = (None, 300.0, 2400.0)
"""Sound of each mouth opening (0, half, full): quiet noise, a low tone, a high tone (Hz)."""


def frame_sounds(levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """16 kHz audio whose sound in video frame ``i`` is :data:`SOUND_TONES` ``[levels[i]]``.

    The sound's *kind* rather than its loudness carries the level: wav2vec2 normalises the waveform
    and each feature vector (layer norm per time step), so the loudness of white noise barely
    survives it (a linear read-out of the tiny random wav2vec2's features recovered R^2 0.25 of a
    noise envelope; held out, 0.57 of these three sounds: ``benchmarks.probes.audio_check``).
    """
    per = round(AUDIO_SAMPLE_RATE / FPS)
    t = np.arange(per) / AUDIO_SAMPLE_RATE
    parts = []
    for level in levels:
        tone = SOUND_TONES[int(level)]
        wave = 0.05 * rng.standard_normal(per) if tone is None else 0.3 * np.sin(2 * np.pi * tone * t + rng.uniform(0, 2 * np.pi))
        parts.append(wave + 0.01 * rng.standard_normal(per))
    return np.concatenate(parts).astype(np.float32)


def stage2_clip(key: str, seed: int, num_frames: int = MOTION + TARGETS, moving_arms: bool = False,
                sharp: bool | None = None) -> dict[str, Any]:
    """A stage-2 probe clip (audio, motion frames, hand clarity, identity crops; skeleton maps with ``moving_arms``).

    Args:
        key: sample key.
        seed: randomness of the figure, the audio envelope and the hand sharpness.
        num_frames: frames (the overfit test uses a longer clip for continuation).
        moving_arms: draw a new arm angle in every frame (the video-mode probe).
        sharp: every hand sharp (True) or blurred (False); None = at random per frame and hand.
    """
    rng = np.random.default_rng(seed)
    fig = random_figure(rng, 2)
    levels = rng.integers(0, len(SOUND_TONES), num_frames)
    mouth = levels / (len(SOUND_TONES) - 1)
    sharpness = rng.uniform(size=(num_frames, 2)) < 0.5 if sharp is None else np.full((num_frames, 2), sharp)
    radius = np.where(np.arange(num_frames) < MOTION, SMALL_HAND, LARGE_HAND)
    sway = rng.uniform(-1.0, 1.0, num_frames)
    angles = rng.uniform(*ARM_ANGLES, num_frames) if moving_arms else np.full(num_frames, fig.arm_angle)
    kps = np.stack([keypoints(fig, s, r, a) for s, r, a in zip(sway, radius, angles, strict=True)])
    frames = np.stack([draw(fig, kps[i], i, True, mouth[i], int(radius[i]), tuple(sharpness[i]), fig.hand)
                       for i in range(num_frames)])
    return _record(key, frames, kps, frame_sounds(levels, rng))


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


CLIP_KINDS = ("stage1", "stage2", "stage2-moving")
"""Probe clip families: :func:`stage1_clip`, :func:`stage2_clip`, :func:`stage2_clip` with ``moving_arms``."""


def make_clip(kind: str, key: str, seed: int) -> dict[str, Any]:
    """One probe clip of a family of :data:`CLIP_KINDS`."""
    if kind == "stage1":
        return stage1_clip(key, seed)
    if kind in ("stage2", "stage2-moving"):
        return stage2_clip(key, seed, moving_arms=kind == "stage2-moving")
    raise ValueError(f"clip kind must be one of {CLIP_KINDS}, got {kind!r}")


def write_probe_shards(directory: str | Path, kind: str, num_clips: int, seed: int = 0) -> Path:
    """Write ``num_clips`` probe clips of one family as committed shards (clip ``i`` uses ``seed + i``).

    Args:
        directory: output folder (created).
        kind: a family of :data:`CLIP_KINDS`.
        num_clips: clips in total.
        seed: base seed.

    Returns:
        The folder.
    """
    tag = kind.replace("stage", "s").replace("-moving", "m")
    records = [make_clip(kind, f"probe{tag}x{seed + i:06d}-0000", seed + i) for i in range(num_clips)]
    return write_clips(directory, records)
