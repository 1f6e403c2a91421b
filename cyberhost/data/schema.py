"""The sample contract: every key, dtype and shape of one preprocessed clip.

``data_prep`` writes clips in this form, :func:`cyberhost.data.iter_clips` and the DataModules
read them, and the tests check them against :func:`validate_clip`. Nothing else in the code base
may invent a key.

Coordinates are pixels of the stored frames, ``x`` right and ``y`` down. Boxes are
``(x0, y0, x1, y1)``; a region that is absent in a frame has a box of NaNs. Keypoints follow the
COCO-WholeBody layout of 133 points (the layout DWPose and RTMW emit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

AUDIO_SAMPLE_RATE = 16_000
"""Audio is stored as mono float32 at this rate, whatever the source had."""

# COCO-WholeBody 133-point layout: index ranges of each part.
NUM_KEYPOINTS = 133
BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
HANDS = slice(91, 133)
NUM_HAND_KEYPOINTS = 42
# Body points by COCO index.
NOSE, LEFT_SHOULDER, RIGHT_SHOULDER = 0, 5, 6
LEFT_WRIST, RIGHT_WRIST = 9, 10
HAND_ORDER = ("left", "right")
"""Index 0 of every per-hand axis is the person's left hand, index 1 the right hand."""


@dataclass(frozen=True)
class Field:
    """One decoded array of a clip.

    Attributes:
        dtype: numpy dtype of the decoded array.
        shape: symbolic shape; ``"F"`` frames, ``"H"``/``"W"`` frame size, ``"S"`` audio samples.
        doc: what the array holds.
    """

    dtype: str
    shape: tuple[int | str, ...]
    doc: str


CLIP_FIELDS: dict[str, Field] = {
    "frames": Field("uint8", ("F", "H", "W", 3), "RGB frames at the clip's fps"),
    "audio": Field("float32", ("S",), "mono audio at 16 kHz, S = round(F / fps * 16000)"),
    "keypoints": Field("float32", ("F", NUM_KEYPOINTS, 3), "COCO-WholeBody x, y (pixels), confidence"),
    "face_box": Field("float32", ("F", 4), "face box per frame, NaN where no face"),
    "hand_boxes": Field("float32", ("F", 2, 4), "left/right hand boxes per frame, NaN where absent"),
    "hand_clarity": Field("float32", ("F", 2), "std of the Laplacian of the 128x128 grey hand crop, NaN where absent"),
    "thorax": Field("float32", ("F", 2), "shoulder midpoint per frame, NaN where a shoulder is missing"),
    "movement_range": Field("float32", (4,), "raw box of the thorax range over the clip (no enlargement)"),
}
"""Array fields of a decoded clip, in the order they are documented."""

META_FIELDS: dict[str, str] = {
    "key": "unique sample key: '<source id>-<clip index>'",
    "fps": "frames per second of the stored frames",
    "source": "path of the input video relative to the input directory",
    "start": "start time of the clip in the source video, seconds",
    "end": "end time of the clip in the source video, seconds",
    "width": "frame width in pixels",
    "height": "frame height in pixels",
    "num_frames": "number of frames F",
    "backend": "keypoint backend that produced the keypoints",
}
"""Scalar metadata of a decoded clip (stored in the sample's ``meta.json``)."""


def validate_clip(clip: dict[str, Any]) -> None:
    """Check a decoded clip against the contract.

    Args:
        clip: one clip as yielded by :func:`cyberhost.data.iter_clips`.

    Raises:
        ValueError: naming the first key that is missing or has a wrong dtype or shape.
    """
    sizes: dict[str, int] = {}
    for name, spec in CLIP_FIELDS.items():
        if name not in clip:
            raise ValueError(f"clip {clip.get('key', '?')!r}: missing array {name!r}")
        arr = clip[name]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(spec.dtype):
            got = getattr(arr, "dtype", type(arr).__name__)
            raise ValueError(f"clip {clip.get('key', '?')!r}: {name!r} must be {spec.dtype}, got {got}")
        if arr.ndim != len(spec.shape):
            raise ValueError(f"clip {clip.get('key', '?')!r}: {name!r} must have shape {spec.shape}, got {arr.shape}")
        for dim, want in zip(arr.shape, spec.shape, strict=True):
            if isinstance(want, int):
                if dim != want:
                    raise ValueError(f"clip {clip.get('key', '?')!r}: {name!r} must have shape {spec.shape}, got {arr.shape}")
            elif sizes.setdefault(want, dim) != dim:
                raise ValueError(
                    f"clip {clip.get('key', '?')!r}: {name!r} has {want}={dim}, other arrays have {sizes[want]}"
                )
    for name in META_FIELDS:
        if name not in clip:
            raise ValueError(f"clip {clip.get('key', '?')!r}: missing metadata {name!r}")
    want_samples = round(sizes["F"] / float(clip["fps"]) * AUDIO_SAMPLE_RATE)
    if abs(sizes["S"] - want_samples) > 1:
        raise ValueError(
            f"clip {clip['key']!r}: audio has {sizes['S']} samples, {sizes['F']} frames at {clip['fps']} fps need {want_samples}"
        )
    if (sizes["H"], sizes["W"]) != (clip["height"], clip["width"]) or sizes["F"] != clip["num_frames"]:
        raise ValueError(f"clip {clip['key']!r}: metadata size disagrees with the frames array {clip['frames'].shape}")
