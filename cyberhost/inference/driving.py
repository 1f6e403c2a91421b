"""Driving videos of the video-driven and multimodal modes (paper Sec. 4.4), streamed.

A driving video is decoded one frame at a time: only the frames an output frame shows go through
the keypoint backend, and only their keypoints (``133 x 3`` floats a frame) are kept. The
keypoints are cropped like a training clip (one crop over the frames used), mapped to the output
frame and aligned to the reference (thorax position and shoulder width of the first frame with
both shoulders). The maps are drawn per segment by the training code (:func:`cyberhost.data.conditions.draw_driving_map`):

* video-driven: the full skeleton of each frame **replaces** the movement map; it enters the
  network where the movement map does, through the Pose Encoder, added to the noised latent.
* multimodal: the hand bones of each frame are drawn **over** the reference's movement box, so
  audio drives face and body while the hands follow the driving video.

Both need a network trained with such maps (``transform.mode: video`` / ``multimodal``, the
overlays in ``conf/modes/``); generation refuses a mode the checkpoint was not trained for. Memory does not grow with the driving
video's length beyond its keypoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from cyberhost.data import regions
from cyberhost.data.schema import LEFT_SHOULDER, NUM_KEYPOINTS, RIGHT_SHOULDER
from cyberhost.data.transforms import TransformConfig, choose_crop, map_points, person_box
from cyberhost.media.keypoints import KeypointBackend
from cyberhost.media.video import count_frames, iter_video, video_fps

from .conditions import ReferenceConditions, detect_person
from .errors import GenerateError, NoPersonError

T = TypeVar("T")


class DrivingVideo:
    """A driving video read frame by frame: a file (streamed with PyAV) or ``(frames, fps)`` in memory.

    Args:
        source: video file, or ``(frames (N, H, W, 3) uint8, fps)``.

    Raises:
        GenerateError: the file is missing or is not a video (naming it).
    """

    def __init__(self, source: str | Path | tuple[np.ndarray, float]) -> None:
        self._frames: np.ndarray | None = None
        self._path: Path | None = None
        if isinstance(source, tuple):
            self._frames, self.fps, self.name = source[0], float(source[1]), "<array>"
            return
        self._path, self.name = Path(source), str(source)
        self.fps = self._guard(video_fps, self._path)

    def _guard(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except (FileNotFoundError, ValueError, OSError) as err:
            raise GenerateError(f"cannot read the driving video {self.name}: {err}") from err

    def count(self) -> int:
        """Frames of the video (a decoding pass for a file; nothing is converted or kept)."""
        return len(self._frames) if self._frames is not None else self._guard(count_frames, self._path)

    def frames(self) -> Iterator[np.ndarray]:
        """``(H, W, 3)`` uint8 RGB frames in order, one held at a time."""
        if self._frames is not None:
            yield from self._frames
            return
        stream = iter_video(self._path)
        while True:
            try:
                frame = next(stream)
            except StopIteration:
                return
            except (FileNotFoundError, ValueError, OSError) as err:
                raise GenerateError(f"cannot read the driving video {self.name}: {err}") from err
            yield frame


def source_indices(num_out: int, out_fps: float, src_fps: float, num_src: int) -> np.ndarray:
    """Driving-video frame shown at each output frame (nearest earlier frame; the last one is held)."""
    t = np.arange(num_out) / out_fps
    return np.minimum(np.floor(t * src_fps + 1e-6).astype(np.int64), num_src - 1)


def _shoulders(kps: np.ndarray, min_confidence: float) -> tuple[np.ndarray, float] | None:
    left, right = kps[LEFT_SHOULDER], kps[RIGHT_SHOULDER]
    if min(left[2], right[2]) < min_confidence:
        return None
    width = float(np.hypot(*(left[:2] - right[:2])))
    return (left[:2] + right[:2]) / 2, width


def align_to_reference(seq: np.ndarray, reference: np.ndarray, min_confidence: float) -> np.ndarray:
    """Scale and shift a keypoint sequence so its first thorax/shoulder width match the reference's.

    Args:
        seq: ``(N, 133, 3)`` driving keypoints in output pixels.
        reference: ``(133, 3)`` reference keypoints in output pixels.
        min_confidence: shoulders below it do not count.

    Returns:
        The aligned copy (unchanged when either side lacks both shoulders).
    """
    ref = _shoulders(reference, min_confidence)
    first = next((s for s in (_shoulders(k, min_confidence) for k in seq) if s is not None), None)
    if ref is None or first is None or first[1] <= 1e-6:
        return seq.copy()
    scale = ref[1] / first[1]
    out = seq.copy()
    out[..., :2] = (seq[..., :2] - first[0]) * scale + ref[0]
    return out


def _detect_shown(video: DrivingVideo, wanted: np.ndarray, backend: KeypointBackend,
                  min_confidence: float) -> tuple[dict[int, np.ndarray], int, tuple[int, int]]:
    """Stream the video; keypoints of the frames in ``wanted`` (unclamped source indices).

    Returns:
        ``(found, num_src, (H, W))``: keypoints by source index (the last decoded frame is added
        when the video ends before a wanted index, since that frame is then held), the frames
        decoded (enough to clamp ``wanted``), and the frame size.
    """
    todo, last_wanted = set(wanted.tolist()), int(wanted.max())
    found: dict[int, np.ndarray] = {}
    size, last, j = None, None, -1
    for j, frame in enumerate(video.frames()):
        size, last = frame.shape[:2], frame
        if j in todo:
            kps = detect_person(frame, backend, min_confidence, f"the driving video {video.name}")
            found[j] = kps if kps is not None else np.zeros((NUM_KEYPOINTS, 3), np.float32)
        if j >= last_wanted:
            break
    if size is None:
        raise GenerateError(f"the driving video {video.name} has no frame")
    if j < last_wanted and j not in found:  # ended early: its last frame is held for the rest
        kps = detect_person(last, backend, min_confidence, f"the driving video {video.name}")
        found[j] = kps if kps is not None else np.zeros((NUM_KEYPOINTS, 3), np.float32)
    return found, j + 1, size


def driving_keypoints(
    video: DrivingVideo,
    out_fps: float,
    num_frames: int,
    backend: KeypointBackend,
    transform: TransformConfig,
    reference: ReferenceConditions,
    align: bool = True,
) -> np.ndarray:
    """Keypoints of a driving video at each output frame, in output pixels (the video streamed).

    Args:
        video: the driving video (its frame rate 0 = same as ``out_fps``).
        out_fps: output frame rate.
        num_frames: output frames.
        backend: keypoint backend (video/tracking mode is fine; it is reset first).
        transform: training's transform settings (crop, thresholds).
        reference: the prepared reference (output size, alignment target).
        align: align to the reference (thorax and shoulder width).

    Returns:
        ``(num_frames, 133, 3)`` float32; frames without a person have zero confidence.

    Raises:
        NoPersonError: no frame of the driving video has a person.
    """
    mc = transform.min_confidence
    src_fps = video.fps or out_fps
    backend.reset()
    found, num_src, size = _detect_shown(video, source_indices(num_frames, out_fps, src_fps, 2**62), backend, mc)
    if not any(k[:, 2].max() >= mc for k in found.values()):
        raise NoPersonError(f"no person found in the driving video {video.name}")
    index = source_indices(num_frames, out_fps, src_fps, num_src)
    seq = np.stack([found[int(j)] for j in index])  # (N, 133, 3) source pixels
    clip = {"keypoints": seq, "face_box": regions.face_boxes(seq, None), "hand_boxes": regions.hand_boxes(seq, None),
            "width": size[1], "height": size[0]}
    crop = choose_crop(size, reference.size, person_box(clip, list(range(len(seq))), mc), transform, None)
    seq = seq.copy()
    seq[..., :2] = map_points(seq[..., :2], crop, reference.size)
    return align_to_reference(seq, reference.keypoints, mc) if align else seq
