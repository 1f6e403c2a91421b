"""Multi-resolution buckets: frame sizes of about one area whose sides are multiples of a step.

CyberHost trains on "multi-resolution buckets of area about 640x384, sides multiple of 64"
(Sec. 4.1). The paper does not list the buckets, so we enumerate every ``(height, width)`` with
both sides multiples of ``multiple`` whose area is within ``tolerance`` of the target area and
whose aspect ratio is within ``max_ratio``; a clip goes to the bucket whose aspect ratio is
closest (in log space) to its frames', so the crop removes as little of the frame as possible.
Batches are formed within one bucket (:class:`BucketBatcher`), so every batch has one size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BucketConfig:
    """The set of training resolutions.

    Attributes:
        area: target area in pixels (``height * width``).
        multiple: both sides are multiples of this (64 keeps the SD latent a multiple of 8).
        tolerance: relative deviation of a bucket's area from ``area`` that is allowed.
        max_ratio: largest long/short side ratio of a bucket.
        sizes: explicit ``[height, width]`` list; when given it replaces the enumeration.
    """

    area: int = 640 * 384
    multiple: int = 64
    tolerance: float = 0.1
    max_ratio: float = 2.0
    sizes: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.multiple < 8 or self.multiple % 8:
            raise ValueError(f"multiple must be a positive multiple of 8 (the VAE stride), got {self.multiple}")
        if self.area < self.multiple**2:
            raise ValueError(f"area {self.area} is smaller than one {self.multiple}x{self.multiple} tile")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {self.max_ratio}")
        for hw in self.sizes or []:
            if len(hw) != 2 or any(s <= 0 or s % self.multiple for s in hw):
                raise ValueError(f"bucket size {hw} must be [height, width], positive multiples of {self.multiple}")
        if not self.buckets():
            raise ValueError(f"no bucket of area {self.area}±{self.tolerance:.0%} with sides multiple of {self.multiple}")

    def buckets(self) -> list[tuple[int, int]]:
        """All bucket sizes ``(height, width)``, sorted by aspect ratio (tall first)."""
        if self.sizes:
            return sorted(((h, w) for h, w in self.sizes), key=lambda hw: hw[1] / hw[0])
        return make_buckets(self.area, self.multiple, self.tolerance, self.max_ratio)


def make_buckets(area: int, multiple: int, tolerance: float, max_ratio: float) -> list[tuple[int, int]]:
    """Enumerate bucket sizes.

    Args:
        area: target area in pixels.
        multiple: side step.
        tolerance: allowed relative area deviation.
        max_ratio: largest long/short side ratio.

    Returns:
        ``(height, width)`` pairs sorted by ``width / height``.
    """
    out = []
    for w in range(multiple, int(math.sqrt(area * max_ratio)) + multiple + 1, multiple):
        h = max(multiple, round(area / w / multiple) * multiple)
        if abs(h * w - area) <= tolerance * area and max(h, w) / min(h, w) <= max_ratio + 1e-9:
            out.append((h, w))
    return sorted(set(out), key=lambda hw: hw[1] / hw[0])


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is closest to ``width / height`` (log distance)."""
    r = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][1] / buckets[i][0]) - r), i))


class BucketBatcher:
    """Groups a stream of items into batches of one bucket each.

    Items wait in a per-bucket list until ``batch_size`` of them share a bucket; the state of
    the lists carries over between calls of :meth:`feed` so a stream can be batched in pieces.
    """

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.pending: dict[int, list[Any]] = {}

    def feed(self, items: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, list[Any]]]:
        """Yield ``(bucket, items)`` batches from ``(bucket, item)`` pairs as buckets fill."""
        for bucket, item in items:
            waiting = self.pending.setdefault(bucket, [])
            waiting.append(item)
            if len(waiting) == self.batch_size:
                self.pending[bucket] = []
                yield bucket, waiting
