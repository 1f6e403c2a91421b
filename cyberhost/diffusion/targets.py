"""Rasterise boxes and keypoints into the targets of CyberHost's losses (Eq. 6, mask loss).

Coordinates are pixels of the frames (``x`` right, ``y`` down; boxes ``x0, y0, x1, y1``; NaN =
absent), as in ``cyberhost.data.schema``. Maps are produced directly at a feature resolution
``(h, w)``: a cell is inside a box when its centre is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cyberhost.data.schema import FACE, HANDS


def _cell_centres(image_size: tuple[int, int], out_size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel coordinates of the cell centres: ys (h,), xs (w,)."""
    (height, width), (h, w) = image_size, out_size
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (height / h)
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (width / w)
    return ys, xs


def box_masks(boxes: Tensor, image_size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    """Union of boxes as a {0, 1} mask.

    Args:
        boxes: ``(..., R, 4)`` boxes in pixels (NaN rows are absent); ``(..., 4)`` is one box.
        image_size: (H, W) of the frames the boxes refer to.
        out_size: (h, w) of the mask.

    Returns:
        ``(..., 1, h, w)`` float mask.
    """
    if boxes.shape[-2:] == (4,) or boxes.dim() == 1:
        boxes = boxes.unsqueeze(-2)
    ys, xs = _cell_centres(image_size, out_size, boxes.device)
    b = boxes.float()[..., None, None]  # (..., R, 4, 1, 1)
    inside_y = (ys[:, None] >= b[..., 1, :, :]) & (ys[:, None] < b[..., 3, :, :])  # (..., R, h, 1)
    inside_x = (xs[None, :] >= b[..., 0, :, :]) & (xs[None, :] < b[..., 2, :, :])  # (..., R, 1, w)
    mask = (inside_y & inside_x).any(dim=-3)  # NaN compares False -> absent boxes add nothing
    return mask.unsqueeze(-3).float()


def points_box(points: Tensor, min_confidence: float) -> Tensor:
    """Box around the confident points: ``(..., P, 3) -> (..., 4)``, NaN where none is confident."""
    ok = points[..., 2] >= min_confidence
    inf = torch.tensor(float("inf"), device=points.device)
    x, y = points[..., 0], points[..., 1]
    box = torch.stack([torch.where(ok, x, inf).amin(-1), torch.where(ok, y, inf).amin(-1),
                       torch.where(ok, x, -inf).amax(-1), torch.where(ok, y, -inf).amax(-1)], dim=-1)
    return torch.where(ok.any(-1, keepdim=True), box, torch.full_like(box, float("nan")))


def keypoint_region_mask(keypoints: Tensor, image_size: tuple[int, int], out_size: tuple[int, int],
                         min_confidence: float = 0.3, margin: float = 0.1) -> Tensor:
    """M of Eq. 6: union of the face and both hands' keypoint boxes (enlarged by ``margin``).

    Args:
        keypoints: ``(..., 133, 3)`` COCO-WholeBody points (x, y, confidence).
        image_size: (H, W) of the frames.
        out_size: (h, w), the latent resolution.
        min_confidence: points below this are ignored.
        margin: relative enlargement of each box on every side (hand points hug the fingers).

    Returns:
        ``(..., 1, h, w)`` float {0, 1} mask.
    """
    parts = [keypoints[..., FACE, :], keypoints[..., HANDS, :][..., :21, :], keypoints[..., HANDS, :][..., 21:, :]]
    boxes = torch.stack([points_box(p, min_confidence) for p in parts], dim=-2)  # (..., 3, 4)
    size = (boxes[..., 2:] - boxes[..., :2]).repeat(*([1] * (boxes.dim() - 1)), 2)
    grow = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device) * margin
    return box_masks(boxes + size * grow, image_size, out_size)


def keypoint_heatmaps(points: Tensor, image_size: tuple[int, int], out_size: tuple[int, int],
                      sigma: float = 1.0, min_confidence: float = 0.3) -> Tensor:
    """Gaussian heatmaps of keypoints (the hand heatmap target of Eq. 6).

    Args:
        points: ``(..., K, 3)`` x, y (pixels), confidence; e.g. the 42 hand points.
        image_size: (H, W) of the frames.
        out_size: (h, w) of the maps.
        sigma: Gaussian std in output cells.
        min_confidence: points below it (or NaN) give an all-zero map.

    Returns:
        ``(..., K, h, w)`` maps with peak 1 at each visible point.
    """
    (height, width), (h, w) = image_size, out_size
    ys, xs = _cell_centres(image_size, out_size, points.device)
    ys, xs = ys / (height / h), xs / (width / w)  # cell units
    px = points[..., 0:1, None] / (width / w)  # (..., K, 1, 1)
    py = points[..., 1:2, None] / (height / h)
    ok = (points[..., 2] >= min_confidence) & torch.isfinite(points[..., :2]).all(-1)
    d2 = (xs.view(1, w) - px) ** 2 + (ys.view(h, 1) - py) ** 2  # (..., K, h, w)
    maps = torch.exp(-d2 / (2 * sigma**2))
    return torch.where(ok[..., None, None], torch.nan_to_num(maps, nan=0.0), torch.zeros_like(maps))
