"""ArcFace face identity encoder for the face RCA's identity descriptor R(I_face) (Sec. 3.2).

The network is insightface's ``arcface_torch`` IResNet (written here from its published
architecture, with the same parameter names), so its released backbones load as a plain state
dict: ``backbone.pth`` files such as ``ms1mv3_arcface_r100_fp16/backbone.pth`` or
``glint360k_cosface_r100_fp16_0.1/backbone.pth`` (load with ``torch.load(weights_only=True)``,
no code execution) or the same tensors saved as ``.safetensors``. Input: aligned 112x112 RGB face
in [-1, 1] (the data aligns the 256-px crop, :func:`align_face` only resizes it); output: the
512-d identity embedding. The network is frozen; ``cyberhost.weights`` loads the file into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv(stride)-BN with a residual (IResNet's improved block)."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """ArcFace IResNet backbone (112x112 input, 512-d embedding).

    Args:
        arch: ``r18``, ``r34``, ``r50`` or ``r100``.
        embed_dim: embedding width (512 for the released models).
    """

    def __init__(self, arch: str = "r100", embed_dim: int = 512) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"ArcFace arch {arch!r} is unknown; choose one of {sorted(ARCHS)}")
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), ARCHS[arch], strict=True), start=1):
            layer = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, embed_dim)
        self.features = nn.BatchNorm1d(embed_dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self.embed_dim = embed_dim

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, 112, 112) in [-1, 1] -> (B, embed_dim)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def align_face(face: Tensor) -> Tensor:
    """ArcFace input from a face crop that is already aligned: resize (B, 3, S, S) in [-1, 1] to 112x112.

    The alignment itself (a similarity warp of the face keypoints onto ArcFace's 5-point template,
    scaled from 112 to S = 256 px) happened in the data, in ``cyberhost.data.faces.align_face_crop``;
    since that template is the 112-px one scaled uniformly, resizing the crop to 112 lands the
    landmarks exactly on ArcFace's own template. No geometry is estimated here.
    """
    if face.shape[-1] == 112 and face.shape[-2] == 112:
        return face
    return F.interpolate(face, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
