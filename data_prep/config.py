"""Configuration of ``python -m data_prep`` (``conf/data/prep.yaml``), validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cyberhost.data.regions import RegionParams

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp")


@dataclass
class KeypointConfig:
    """Keypoint backend.

    Attributes:
        backend: ``mediapipe`` (offline default) or ``rtmlib`` (DWPose/RTMW from local ONNX files).
        static_image_mode: MediaPipe: detect every frame from scratch instead of tracking (slower).
        detect_short_side: MediaPipe: run on a copy with this short side (0 = stored frame size).
        rtmlib_det: rtmlib: local path of the person detector ONNX.
        rtmlib_pose: rtmlib: local path of the whole-body pose ONNX.
        rtmlib_det_input_size: rtmlib: detector input (w, h).
        rtmlib_pose_input_size: rtmlib: pose input (w, h).
        rtmlib_device: rtmlib: ``cpu`` or ``cuda``.
    """

    backend: str = "mediapipe"
    static_image_mode: bool = False
    detect_short_side: int = 0
    rtmlib_det: str = ""
    rtmlib_pose: str = ""
    rtmlib_det_input_size: tuple[int, int] = (640, 640)
    rtmlib_pose_input_size: tuple[int, int] = (288, 384)
    rtmlib_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in ("mediapipe", "rtmlib"):
            raise ValueError(f"keypoints.backend must be 'mediapipe' or 'rtmlib', got {self.backend!r}")
        if self.detect_short_side < 0:
            raise ValueError("keypoints.detect_short_side must be >= 0 (0 keeps the stored size)")
        self.rtmlib_det_input_size = tuple(self.rtmlib_det_input_size)
        self.rtmlib_pose_input_size = tuple(self.rtmlib_pose_input_size)

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`cyberhost.media.keypoints.make_backend`."""
        if self.backend == "mediapipe":
            return {"static_image_mode": self.static_image_mode, "detect_short_side": self.detect_short_side or None}
        return {
            "det": self.rtmlib_det,
            "pose": self.rtmlib_pose,
            "det_input_size": self.rtmlib_det_input_size,
            "pose_input_size": self.rtmlib_pose_input_size,
            "device": self.rtmlib_device,
        }


@dataclass
class FilterConfig:
    """Quality filters; a clip failing one is dropped with the reason in the report.

    Attributes:
        min_person_fraction: a person (both shoulders confident) must be present in at least this fraction of frames.
        min_face_fraction: a face box must exist in at least this fraction of frames.
        min_face_size: median face box side, pixels of the stored frames.
        max_second_person_ratio: drop clips where a second person is at least this large relative
            to the main one in more than 10 % of frames. Needs a multi-person backend (rtmlib);
            MediaPipe holistic reports one person, so with it this check never fires.
        require_audio: skip videos without an audio track (the model is audio-driven).
    """

    min_person_fraction: float = 0.8
    min_face_fraction: float = 0.8
    min_face_size: float = 32.0
    max_second_person_ratio: float = 0.5
    require_audio: bool = True

    def __post_init__(self) -> None:
        for name in ("min_person_fraction", "min_face_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"filters.{name} must be within [0, 1], got {getattr(self, name)}")
        if self.max_second_person_ratio <= 0:
            raise ValueError("filters.max_second_person_ratio must be > 0 (1.0 disables the check)")


@dataclass
class PrepConfig:
    """Everything ``python -m data_prep`` can be told besides input/output and parallelism.

    Attributes:
        fps: frame rate of the stored clips (frames are picked by timestamp, so VFR input works).
        max_short_side: frames with a larger short side are downscaled to it.
        max_input_pixels: inputs with more pixels per frame are skipped (decoding cost), not downscaled.
        clip_frames: frames per clip.
        clip_stride: frames between clip starts (== clip_frames: no overlap).
        min_clip_frames: the last, shorter clip of a video is kept if it has at least this many frames.
        frame_encoding: ``jpg`` (one JPEG per frame) or ``mp4`` (one H.264 segment per clip).
        quality: JPEG quality (mp4: CRF = 51 * (100 - quality) / 100).
        max_shard_mb: start a new shard after this many MB (shards only roll between videos).
        extensions: file endings treated as videos (case-insensitive); inputs are matched by
            extension only, other files are listed as ``ignored`` in the report.
        keypoints: keypoint backend.
        regions: face/hand box thresholds and margins.
        filters: quality filters.
        pin_workers: with 2 or more workers (and no more workers than usable CPUs), pin worker i to
            the i-th CPU this process may use. MediaPipe runs its graph on several threads; unpinned
            workers contend for the cores (BENCHMARKS.md: pinned, two workers on two cores detect
            keypoints about 15 % faster). One worker is never pinned.
    """

    fps: float = 25.0
    max_short_side: int = 512
    max_input_pixels: int = 4096 * 4096
    clip_frames: int = 50
    clip_stride: int = 50
    min_clip_frames: int = 25
    frame_encoding: str = "jpg"
    quality: int = 90
    max_shard_mb: float = 512.0
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    regions: RegionParams = field(default_factory=RegionParams)
    filters: FilterConfig = field(default_factory=FilterConfig)
    pin_workers: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps must be within [1, 120], got {self.fps}")
        if self.max_short_side < 64:
            raise ValueError(f"max_short_side must be >= 64, got {self.max_short_side}")
        if not 1 <= self.min_clip_frames <= self.clip_frames:
            raise ValueError(f"need 1 <= min_clip_frames <= clip_frames, got {self.min_clip_frames} and {self.clip_frames}")
        if self.clip_stride < 1:
            raise ValueError(f"clip_stride must be >= 1, got {self.clip_stride}")
        if self.frame_encoding not in ("jpg", "mp4"):
            raise ValueError(f"frame_encoding must be 'jpg' or 'mp4', got {self.frame_encoding!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be within [1, 100], got {self.quality}")
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions)
        self.keypoints = _section(KeypointConfig, self.keypoints, "keypoints")
        self.regions = _section(RegionParams, self.regions, "regions")
        self.filters = _section(FilterConfig, self.filters, "filters")

    @classmethod
    def from_yaml(cls, path: str | Path | None) -> PrepConfig:
        """Load a YAML file (``None``: defaults).

        Raises:
            ValueError: naming an unknown key or a bad value.
        """
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return _section(cls, data, str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (saved in the manifest)."""
        return dataclasses.asdict(self)


def _section(cls: type, value: Any, where: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**value)
