"""Steps 4-6: per-frame keypoints of the dominant person, then a clip's boxes, thorax and clarity."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from cyberhost.data import regions
from cyberhost.media.keypoints import KeypointBackend, dominant_person


@dataclass
class AnnotatedFrame:
    """One stored frame with its keypoints.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        keypoints: ``(133, 3)`` of the dominant person (zeros when nobody is found).
        second_ratio: size of the runner-up person relative to the dominant one (0 when alone).
    """

    image: np.ndarray
    keypoints: np.ndarray
    second_ratio: float


class StepTimer:
    """Seconds spent per pipeline step.

    Steps: ``decode`` (video demux, decode, resize; audio decode and resample), ``keypoints``
    (the backend), ``clarity`` (hand crop Laplacians), ``regions`` (boxes, thorax, audio cut,
    filters), ``write`` (encode + tar write).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def timed(self, step: str, items: Iterable) -> Iterator:
        """Iterate ``items`` charging the time spent producing each one to ``step``."""
        it = iter(items)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds[step] += time.perf_counter() - t
                return
            self.seconds[step] += time.perf_counter() - t
            yield item

    def add(self, step: str, seconds: float) -> None:
        """Charge ``seconds`` to ``step``."""
        self.seconds[step] += seconds


def annotate_frames(
    frames: Iterable[tuple[int, np.ndarray]], backend: KeypointBackend, min_confidence: float, timer: StepTimer
) -> Iterator[tuple[int, AnnotatedFrame]]:
    """Run the keypoint backend on every frame.

    Args:
        frames: ``(index, image)`` pairs.
        backend: keypoint backend (already reset for this video).
        min_confidence: confidence counted when sizing persons.
        timer: receives the ``keypoints`` time.

    Yields:
        ``(index, AnnotatedFrame)``.
    """
    for k, image in frames:
        t = time.perf_counter()
        person, ratio = dominant_person(backend(image), min_confidence)
        timer.add("keypoints", time.perf_counter() - t)
        yield k, AnnotatedFrame(image, person, ratio)


def clip_regions(images: np.ndarray, keypoints: np.ndarray, params: regions.RegionParams, timer: StepTimer | None = None) -> dict[str, np.ndarray]:
    """The region arrays of one clip.

    Args:
        images: ``(F, H, W, 3)`` uint8.
        keypoints: ``(F, 133, 3)``.
        params: box thresholds and margins.
        timer: receives the ``clarity`` time (the hand crops' Laplacian), if given.

    Returns:
        ``face_box``, ``hand_boxes``, ``hand_clarity``, ``thorax`` and ``movement_range`` arrays.
    """
    size = (images.shape[2], images.shape[1])
    hands = regions.hand_boxes(keypoints, size, params)
    trajectory = regions.thorax(keypoints, params.min_confidence)
    t = time.perf_counter()
    clarity = regions.hand_clarity(images, hands)
    if timer is not None:
        timer.add("clarity", time.perf_counter() - t)
    return {
        "face_box": regions.face_boxes(keypoints, size, params),
        "hand_boxes": hands,
        "hand_clarity": clarity,
        "thorax": trajectory,
        "movement_range": regions.movement_range(trajectory),
    }
