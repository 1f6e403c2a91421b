"""SyncC / SyncD (a.k.a. LSE-C / LSE-D): audio-visual sync with SyncNet (Chung & Zisserman, 2016).

This is the computation of ``syncnet_python`` (the ``syncnet_v2.model`` weights) that Wav2Lip
popularised as LSE-C/LSE-D and that talking-head papers, CyberHost included, report:

1. Video at 25 fps (other rates are resampled by nearest frame), face crops of 224x224 in BGR
   0-255 (the network was trained on ``cv2.imread`` frames); 5-frame windows through the lip tower.
2. Audio mono 16 kHz at int16 scale, 13 MFCCs per 10 ms (``python_speech_features.mfcc`` defaults,
   re-implemented in :func:`mfcc`), 20-MFCC windows (= 5 video frames) through the audio tower.
3. For every video window ``i`` and every shift ``s`` in ``[-vshift, vshift]`` (15), the Euclidean
   distance between the lip feature ``i`` and the audio feature ``i + s`` (zeros outside);
   averaged over ``i``. SyncD = the minimum of that mean distance over shifts; SyncC = its median
   over shifts minus the minimum; offset = ``vshift - argmin`` frames.

Difference to ``syncnet_python``: faces come from the keypoint backend (the box of the 68
COCO-WholeBody face points, median-filtered over 13 frames, cropped with the same 0.4 crop scale)
instead of its S3FD detector + tracker, so numbers are close to but not bit-identical with it.
Only ``syncnet_v2.model`` fits :class:`SyncNetV2`; the Wav2Lip/LatentSync SyncNets (mel input,
lower-half 48x96 or 256 crops) are different networks.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.fft import dct
from scipy.signal import medfilt
from torch import nn

from cyberhost.data.schema import FACE
from cyberhost.weights.files import safe_torch_load

__all__ = ["SyncNetV2", "face_crops", "load_syncnet", "mfcc", "sync_scores", "sync_video"]

SYNC_FPS = 25
SYNC_SR = 16_000
CROP_SIZE = 224
CROP_SCALE = 0.4
VSHIFT = 15


def _block(conv: nn.Module, channels: int, bn: type[nn.Module], pool: nn.Module | None) -> list[nn.Module]:
    layers = [conv, bn(channels), nn.ReLU()]
    return layers + ([pool] if pool is not None else [])


class SyncNetV2(nn.Module):
    """The ``syncnet_python`` network; module names and Sequential indices match ``syncnet_v2.model``."""

    def __init__(self, embed_dim: int = 1024) -> None:
        """Build the two towers.

        Args:
            embed_dim: output embedding size (1024 in ``syncnet_v2.model``).
        """
        super().__init__()
        c2, c3 = nn.Conv2d, nn.Conv3d
        bn2, bn3 = nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(  # (N, 1, 13, 20) MFCC window -> (N, 512, 1, 1)
            *_block(c2(1, 64, 3, padding=1), 64, bn2, nn.MaxPool2d(1, 1)),
            *_block(c2(64, 192, 3, padding=1), 192, bn2, nn.MaxPool2d(3, (1, 2))),
            *_block(c2(192, 384, 3, padding=1), 384, bn2, None),
            *_block(c2(384, 256, 3, padding=1), 256, bn2, None),
            *_block(c2(256, 256, 3, padding=1), 256, bn2, nn.MaxPool2d(3, 2)),
            *_block(c2(256, 512, (5, 4)), 512, bn2, None),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(  # (N, 3, 5, 224, 224) -> (N, 512, 1, 1, 1)
            *_block(c3(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, bn3, nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_block(
                c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), 256, bn3, nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
            ),
            *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3, None),
            *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3, None),
            *_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3, nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_block(c3(256, 512, (1, 6, 6)), 512, bn3, None),
        )

    def forward_aud(self, mfcc_windows: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 13, 20)`` → ``(N, embed_dim)``."""
        return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

    def forward_lip(self, clips: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 5, 224, 224)`` BGR 0-255 → ``(N, embed_dim)``."""
        return self.netfclip(self.netcnnlip(clips).flatten(1))


def load_syncnet(path: str | Path) -> SyncNetV2:
    """Load ``syncnet_v2.model`` (a state dict of tensors) with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: its keys or shapes do not fit :class:`SyncNetV2`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet weights not found: {path}")
    state = safe_torch_load(path)
    net = SyncNetV2()
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except (RuntimeError, AttributeError, TypeError) as err:
        raise ValueError(f"{path} does not fit syncnet_v2 (syncnet_python's SyncNetModel.S): {err}") from err
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # absent from old checkpoints
    if missing or unexpected:
        raise ValueError(f"{path} does not fit syncnet_v2: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval().requires_grad_(False)


def _mel_filterbank(nfilt: int, nfft: int, sr: int) -> np.ndarray:
    """Triangular filters on FFT bins as python_speech_features builds them (floored bin edges)."""
    high_mel = 2595 * np.log10(1 + (sr / 2) / 700)
    hz = 700 * (10 ** (np.linspace(0, high_mel, nfilt + 2) / 2595) - 1)
    bins = np.floor((nfft + 1) * hz / sr).astype(int)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        fb[j, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        fb[j, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    return fb


def mfcc(signal: np.ndarray, sr: int = SYNC_SR, numcep: int = 13, nfilt: int = 26, nfft: int = 512) -> np.ndarray:
    """MFCCs with ``python_speech_features.mfcc`` defaults (25 ms rectangular window, 10 ms step).

    Pre-emphasis 0.97, power spectrum / nfft, 26 mel filters up to sr/2, log, orthonormal DCT-II,
    sinusoidal lifter 22, and coefficient 0 replaced by the log frame energy.

    Args:
        signal: mono samples (at int16 scale for SyncNet).
        sr: sample rate.
        numcep: coefficients kept.
        nfilt: mel filters.
        nfft: FFT size.

    Returns:
        ``(T, numcep)`` float64 with ``T = 1 + ceil((len - 400) / 160)`` at 16 kHz.
    """
    signal = np.asarray(signal, dtype=np.float64)
    signal = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    flen, step = int(round(0.025 * sr)), int(round(0.01 * sr))
    nframes = 1 if len(signal) <= flen else 1 + math.ceil((len(signal) - flen) / step)
    signal = np.pad(signal, (0, (nframes - 1) * step + flen - len(signal)))
    idx = np.arange(flen)[None, :] + step * np.arange(nframes)[:, None]
    power = np.abs(np.fft.rfft(signal[idx], nfft)) ** 2 / nfft  # (T, nfft/2+1)
    eps = np.finfo(float).eps
    energy = np.maximum(power.sum(1), eps)
    feat = np.log(np.maximum(power @ _mel_filterbank(nfilt, nfft, sr).T, eps))
    ceps = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    ceps *= 1 + 11 * np.sin(np.pi * np.arange(numcep) / 22)  # lifter L=22: 1 + L/2 sin(pi n / L)
    ceps[:, 0] = np.log(energy)
    return ceps


def sync_scores(lip: torch.Tensor, aud: torch.Tensor, vshift: int = VSHIFT) -> dict[str, float]:
    """Offset search on per-window features (the ``calc_pdist`` step of ``syncnet_python``).

    Args:
        lip: ``(N, D)`` lip features, window ``i`` starts at video frame ``i``.
        aud: ``(N, D)`` audio features of the same windows.
        vshift: largest shift searched, in frames.

    Returns:
        ``sync_d`` (min mean distance), ``sync_c`` (median minus min) and ``offset`` in frames,
        ``vshift - argmin`` as in ``syncnet_python``: negative when the audio lags the video
        (frame ``i`` matches audio window ``i + |offset|``), positive when it leads.
    """
    n = lip.shape[0]
    padded = torch.nn.functional.pad(aud, (0, 0, vshift, vshift))  # zeros outside, as the reference does
    shifts = torch.arange(2 * vshift + 1)
    windows = padded[torch.arange(n)[:, None] + shifts[None, :]]  # (N, 2v+1, D)
    dists = torch.linalg.vector_norm(lip[:, None, :] - windows + 1e-6, dim=-1)  # pairwise_distance's eps
    mean = dists.mean(0)  # (2v+1,)
    minval, minidx = mean.min(0)
    return {"sync_d": float(minval), "sync_c": float(mean.median() - minval), "offset": int(vshift - minidx)}


def _face_track(keypoints: np.ndarray, min_confidence: float = 0.3) -> np.ndarray | None:
    """Per-frame ``(cx, cy, half size)`` of the face-landmark box, gaps interpolated, median-filtered."""
    face = keypoints[:, FACE]  # (F, 68, 3)
    rows = np.full((len(face), 3), np.nan)
    for t, pts in enumerate(face):
        good = pts[pts[:, 2] >= min_confidence, :2]
        if len(good) >= 10:
            (x0, y0), (x1, y1) = good.min(0), good.max(0)
            rows[t] = ((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2)
    ok = ~np.isnan(rows[:, 0])
    if not ok.any():
        return None
    t = np.arange(len(rows))
    for k in range(3):
        rows[:, k] = np.interp(t, t[ok], rows[ok, k])
    kernel = min(13, len(rows) if len(rows) % 2 else len(rows) - 1)
    return np.stack([medfilt(rows[:, k], kernel) for k in range(3)], 1) if kernel >= 3 else rows


def face_crops(frames: np.ndarray, keypoints: np.ndarray) -> np.ndarray | None:
    """SyncNet face crops, ``uint8`` RGB ``(F, 224, 224, 3)``, or ``None`` when no face is found.

    The crop spans ``bs·(1+cs)`` left/right of the box centre, ``bs`` above and ``bs·(1+2cs)``
    below (``bs`` = half the box side, ``cs`` = 0.4), padded with grey 110 outside the frame.
    """
    track = _face_track(keypoints)
    if track is None:
        return None
    out = np.empty((len(frames), CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    for t, (frame, (cx, cy, bs)) in enumerate(zip(frames, track, strict=True)):
        bs = max(bs, 4.0)
        pad = int(bs * (1 + 2 * CROP_SCALE))
        padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(110, 110, 110))
        cy, cx = cy + pad, cx + pad
        y0, y1 = int(cy - bs), int(cy + bs * (1 + 2 * CROP_SCALE))
        x0, x1 = int(cx - bs * (1 + CROP_SCALE)), int(cx + bs * (1 + CROP_SCALE))
        out[t] = cv2.resize(padded[max(y0, 0) : y1, max(x0, 0) : x1], (CROP_SIZE, CROP_SIZE))
    return out


def resample_indices(num_frames: int, fps: float, target_fps: float = SYNC_FPS) -> np.ndarray:
    """Nearest-frame indices that resample ``num_frames`` at ``fps`` to ``target_fps``."""
    if fps <= 0:
        raise ValueError(f"unknown frame rate ({fps}); SyncNet needs the video's fps")
    count = int(math.floor(num_frames * target_fps / fps + 1e-6))
    return np.minimum(np.round(np.arange(count) * fps / target_fps).astype(int), num_frames - 1)


@torch.no_grad()
def sync_video(
    net: SyncNetV2, crops: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT, batch: int = 32
) -> dict[str, float]:
    """SyncC/SyncD of 25-fps face crops against 16 kHz audio.

    Args:
        net: SyncNet in eval mode.
        crops: ``uint8`` RGB ``(F, 224, 224, 3)`` at 25 fps.
        audio: mono float32 in ``[-1, 1]`` at 16 kHz.
        vshift: largest shift searched, in frames.
        batch: windows per forward.

    Returns:
        ``sync_c``, ``sync_d``, ``offset`` and ``windows`` (number of 5-frame windows).

    Raises:
        ValueError: fewer than 6 frames of overlapping audio and video.
    """
    ceps = mfcc(audio * 32768.0).T.astype(np.float32)  # (13, T) at 100 Hz; int16 scale as in the reference
    num = min(len(crops), len(audio) // (SYNC_SR // SYNC_FPS))
    last = num - 5
    if last < 1:
        raise ValueError(f"SyncNet needs at least 6 frames with audio, got {num}")
    video = torch.from_numpy(crops[..., ::-1].copy()).permute(3, 0, 1, 2).float()  # (3, F, 224, 224) BGR
    cc = torch.from_numpy(ceps)
    lips, auds = [], []
    for start in range(0, last, batch):
        idx = range(start, min(last, start + batch))
        lips.append(net.forward_lip(torch.stack([video[:, i : i + 5] for i in idx])))
        auds.append(net.forward_aud(torch.stack([cc[None, :, 4 * i : 4 * i + 20] for i in idx])))
    scores = sync_scores(torch.cat(lips), torch.cat(auds), vshift)
    return {**scores, "windows": last}
