"""Step 3: cut the frame stream into clips of ``clip_frames`` every ``clip_stride`` frames.

Clip ``j`` covers frames ``[j * stride, j * stride + clip_frames)``; the last, shorter run is kept
as a clip when it has at least ``min_clip_frames`` frames that no earlier clip holds. Frames that
no clip needs (gaps when ``stride > clip_frames``) are never annotated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def needed(k: int, clip_frames: int, stride: int) -> bool:
    """Whether frame ``k`` belongs to some full-length clip window (or a possible tail)."""
    return stride <= clip_frames or k % stride < clip_frames


def windows(items: Iterable[tuple[int, T]], clip_frames: int, stride: int, min_frames: int) -> Iterator[tuple[int, list[T]]]:
    """Group indexed items into clip windows.

    Args:
        items: ``(frame index, item)`` in increasing index order (gaps allowed where not needed).
        clip_frames: frames per clip.
        stride: frames between clip starts.
        min_frames: smallest tail clip.

    Yields:
        ``(start frame, items)`` per clip.
    """
    start, buf, last_end, last_k = 0, [], 0, -1
    for k, item in items:
        if k < start:
            continue
        buf.append((k, item))
        last_k = k
        if k == start + clip_frames - 1:
            yield start, [it for _, it in buf]
            last_end = k + 1
            start += stride
            buf = [(i, it) for i, it in buf if i >= start]
    if buf and last_k + 1 > last_end and len(buf) >= min_frames and last_k - start + 1 == len(buf):
        yield start, [it for _, it in buf]
