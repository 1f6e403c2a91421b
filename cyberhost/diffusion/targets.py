"""Rasterise boxes and keypoints into the targets of CyberHost's losses (Eq. 6, mask loss).

Coordinates are pixels of the frames (``x`` right, ``y`` down; boxes ``x0, y0, x1, y1``). Absent
is a value plus a validity mask, as in :mod:`cyberhost.data.conditions`: every function takes a
bool ``valid`` next to its boxes or points, and the values under ``valid == False`` are never
read (they may be zeros, NaN or anything). Maps are produced directly at a feature resolution
``(h, w)``: a cell is inside a box when its centre is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cyberhost.data.schema import FACE, LEFT_HAND, RIGHT_HAND


def _cell_centres(image_size: tuple[int, int], out_size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel coordinates of the cell centres: ys (h,), xs (w,)."""
    (height, width), (h, w) = image_size, out_size
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (height / h)
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (width / w)
    return ys, xs


def _check(values: Tensor, valid: Tensor, last: int, name: str) -> None:
    if values.shape[-1] != last or values.shape[:-1] != valid.shape or valid.dtype != torch.bool:
        raise ValueError(f"{name}: values (..., {last}) and a bool mask of their leading shape expected, "
                         f"got {tuple(values.shape)} and {valid.dtype} {tuple(valid.shape)}")


def box_masks(boxes: Tensor, valid: Tensor, image_size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    """Union of the valid boxes as a {0, 1} mask.

    Args:
        boxes: ``(..., R, 4)`` boxes in pixels (one box: ``R = 1``).
        valid: ``(..., R)`` bool; False rows add nothing, whatever their values.
        image_size: (H, W) of the frames the boxes refer to.
        out_size: (h, w) of the mask.

    Returns:
        ``(..., 1, h, w)`` float mask.
    """
    _check(boxes, valid, 4, "box_masks")
    ys, xs = _cell_centres(image_size, out_size, boxes.device)
    b = torch.where(valid[..., None], boxes.float(), 0.0)[..., None, None]  # (..., R, 4, 1, 1)
    inside_y = (ys[:, None] >= b[..., 1, :, :]) & (ys[:, None] < b[..., 3, :, :])  # (..., R, h, 1)
    inside_x = (xs[None, :] >= b[..., 0, :, :]) & (xs[None, :] < b[..., 2, :, :])  # (..., R, 1, w)
    mask = (inside_y & inside_x & valid[..., None, None]).any(dim=-3)  # (..., h, w)
    return mask.unsqueeze(-3).float()


def bounding_box_of_valid_points(points: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Tight box around the valid points of each group (no margin, no minimum count).

    Args:
        points: ``(..., P, 2)`` x, y.
        valid: ``(..., P)`` bool.

    Returns:
        ``(boxes (..., 4), box_valid (...,))``: ``x0, y0, x1, y1`` of the valid points; zeros and
        False where none is valid.
    """
    _check(points, valid, 2, "bounding_box_of_valid_points")
    inf = torch.tensor(float("inf"), device=points.device)
    x, y = points[..., 0].float(), points[..., 1].float()
    box = torch.stack([torch.where(valid, x, inf).amin(-1), torch.where(valid, y, inf).amin(-1),
                       torch.where(valid, x, -inf).amax(-1), torch.where(valid, y, -inf).amax(-1)], dim=-1)
    any_valid = valid.any(-1)
    return torch.where(any_valid[..., None], box, 0.0), any_valid


def keypoint_region_mask(keypoints: Tensor, valid: Tensor, image_size: tuple[int, int], out_size: tuple[int, int],
                         margin: float = 0.1) -> Tensor:
    """M of Eq. 6: union of the face and both hands' keypoint boxes (enlarged by ``margin``).

    Args:
        keypoints: ``(..., 133, 2)`` COCO-WholeBody x, y in pixels.
        valid: ``(..., 133)`` bool, e.g. the batch's ``keypoints_valid`` (confident and in the frame).
        image_size: (H, W) of the frames.
        out_size: (h, w), the latent resolution.
        margin: relative enlargement of each box on every side (hand points hug the fingers).

    Returns:
        ``(..., 1, h, w)`` float {0, 1} mask; a part without valid points adds nothing.
    """
    _check(keypoints, valid, 2, "keypoint_region_mask")
    parts = [bounding_box_of_valid_points(keypoints[..., s, :], valid[..., s]) for s in (FACE, LEFT_HAND, RIGHT_HAND)]
    boxes = torch.stack([b for b, _ in parts], dim=-2)  # (..., 3, 4)
    box_valid = torch.stack([v for _, v in parts], dim=-1)  # (..., 3)
    size = (boxes[..., 2:] - boxes[..., :2]).repeat(*([1] * (boxes.dim() - 1)), 2)
    grow = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device) * margin
    return box_masks(boxes + size * grow, box_valid, image_size, out_size)


def keypoint_heatmaps(points: Tensor, valid: Tensor, image_size: tuple[int, int], out_size: tuple[int, int],
                      sigma: float = 1.0) -> Tensor:
    """Gaussian heatmaps of keypoints (the hand heatmap target of Eq. 6).

    Args:
        points: ``(..., K, 2)`` x, y in pixels; e.g. the 42 hand points.
        valid: ``(..., K)`` bool; an invalid point gives an all-zero map (the loss also skips it).
        image_size: (H, W) of the frames.
        out_size: (h, w) of the maps.
        sigma: Gaussian std in cells of the output map.

    Returns:
        ``(..., K, h, w)`` maps, ``exp(-d^2 / 2 sigma^2)`` with ``d`` the distance in cells from
        each cell centre to the point (peak 1 when the point sits on a cell centre).
    """
    _check(points, valid, 2, "keypoint_heatmaps")
    (height, width), (h, w) = image_size, out_size
    ys, xs = _cell_centres(image_size, out_size, points.device)
    ys, xs = ys / (height / h), xs / (width / w)  # cell units
    safe = torch.where(valid[..., None], points.float(), 0.0)
    px = safe[..., 0:1, None] / (width / w)  # (..., K, 1, 1)
    py = safe[..., 1:2, None] / (height / h)
    d2 = (xs.view(1, w) - px) ** 2 + (ys.view(h, 1) - py) ** 2  # (..., K, h, w)
    return torch.exp(-d2 / (2 * sigma**2)) * valid[..., None, None]
