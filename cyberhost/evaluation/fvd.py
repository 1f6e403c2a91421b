"""FVD: Fréchet distance between I3D features of generated and ground-truth 16-frame clips.

Protocol: each video is cut into non-overlapping clips of 16 consecutive frames from frame 0 (a
remainder shorter than 16 frames is dropped); each frame is resized to a 224-pixel short side
(bilinear, antialiased) and centre-cropped to 224x224, scaled to ``[-1, 1]``; a clip is
``(3, 16, 224, 224)``. Features are the 400-d pre-softmax logits of the Kinetics-400 I3D, from
a TorchScript file called as ``i3d(x, rescale=False, resize=False, return_features=True)`` —
the convention of ``i3d_torchscript.pt`` (StyleGAN-V / fvd-comparison, the port of the TF-Hub
I3D used by the original FVD). The keyword arguments are configurable for other exports.
FVD is computed once over all clips of all videos (it is a distribution distance; per-video
values are meaningless) and needs at least 2 clips on each side; with few clips it is biased
upwards, so compare numbers only at equal clip counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["I3DFeatures", "fvd_clips"]

CLIP_LEN = 16
CLIP_SIZE = 224
DEFAULT_CALL_KWARGS: dict[str, Any] = {"rescale": False, "resize": False, "return_features": True}


def _resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``uint8 (T, H, W, 3)`` → float ``(3, T, size, size)`` in ``[-1, 1]``."""
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x / 127.5 - 1).clamp(-1, 1).permute(1, 0, 2, 3)  # (3, T, size, size)


def fvd_clips(frames: np.ndarray, clip_len: int = CLIP_LEN, size: int = CLIP_SIZE) -> Iterator[torch.Tensor]:
    """Yield the clips of one video, ``(3, clip_len, size, size)`` each, in ``[-1, 1]``."""
    for start in range(0, len(frames) - clip_len + 1, clip_len):
        yield _resize_crop(torch.from_numpy(frames[start : start + clip_len]), size)


class I3DFeatures:
    """An I3D TorchScript network turned into a clip → feature function."""

    def __init__(
        self,
        path: str | Path,
        call_kwargs: Mapping[str, Any] | None = None,
        device: str = "cpu",
        batch: int = 4,
    ) -> None:
        """Load the network.

        Args:
            path: TorchScript file (e.g. ``i3d_torchscript.pt``).
            call_kwargs: keyword arguments of every call (default: no rescale, no resize, features).
            device: where the network runs.
            batch: clips per forward.

        Raises:
            FileNotFoundError: the file does not exist.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights not found: {path}")
        self.net = torch.jit.load(str(path), map_location=device).eval()
        self.kwargs = dict(DEFAULT_CALL_KWARGS if call_kwargs is None else call_kwargs)
        self.device, self.batch = device, batch

    @torch.no_grad()
    def __call__(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """Features ``(N, D)`` of ``N`` clips ``(3, T, 224, 224)``."""
        outs = []
        for i in range(0, len(clips), self.batch):
            x = torch.stack(clips[i : i + self.batch]).to(self.device)  # (B, 3, T, 224, 224)
            outs.append(self.net(x, **self.kwargs).float().cpu().reshape(x.shape[0], -1))
        return torch.cat(outs) if outs else torch.zeros(0, 0)
