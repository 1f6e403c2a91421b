"""SyncNet mechanics with random weights: MFCC framing, the offset search, the full pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cyberhost.evaluation.syncnet import (
    SyncNetV2,
    face_crops,
    load_syncnet,
    mfcc,
    resample_indices,
    sync_scores,
    sync_video,
)
from tests.evaluation.helpers import moving_frames, person_keypoints


def test_mfcc_framing_and_energy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3000, size=16_000)
    ceps = mfcc(x)
    assert ceps.shape == (99, 13)  # 1 + ceil((16000 - 400) / 160)
    emph = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    frame = emph[160 * 5 : 160 * 5 + 400]
    power = np.abs(np.fft.rfft(frame, 512)) ** 2 / 512
    assert ceps[5, 0] == pytest.approx(np.log(power.sum()), rel=1e-10)
    # a pure tone: energy sits in one band, so the log-mel spectrum (DCT'd) is not flat
    tone = 3000 * np.sin(2 * np.pi * 1000 * np.arange(16_000) / 16_000)
    assert np.abs(mfcc(tone)[10, 1:]).max() > 1
    # louder by k: every log-mel band rises by log k^2, a constant the DCT puts in coefficient 0 alone, and
    # coefficient 0 is the log energy, which rises by log k^2 too
    louder = mfcc(2.0 * x)
    np.testing.assert_allclose(louder[:, 1:], ceps[:, 1:], rtol=0, atol=1e-8)
    np.testing.assert_allclose(louder[:, 0], ceps[:, 0] + np.log(4.0), rtol=0, atol=1e-8)


def test_offset_search_finds_shift() -> None:
    torch.manual_seed(0)
    aud = torch.randn(40, 16)
    for shift in (-3, 0, 4):
        lip = torch.roll(aud, shifts=shift, dims=0)  # lip i matches audio i - shift
        out = sync_scores(lip, aud, vshift=6)
        assert out["offset"] == shift
        assert out["sync_c"] > 0
    assert sync_scores(aud, aud, vshift=6)["sync_d"] < 1e-3 * 40


@torch.no_grad()
def test_audio_shift_is_found_through_the_audio_tower() -> None:
    """Lip features := audio-tower features of the same audio, one stream delayed by k frames
    (k*640 samples): the search must report offset -k for late audio and +k for late video, which
    checks the MFCC framing (4 per video frame), the windowing and the sign convention."""
    torch.manual_seed(0)
    net = SyncNetV2(embed_dim=32).eval()
    rng = np.random.default_rng(0)
    audio = rng.normal(scale=3000, size=16_000 * 2) * np.repeat(rng.uniform(0, 1, 50), 640)

    def aud_feats(samples: np.ndarray, n: int) -> torch.Tensor:
        cc = torch.from_numpy(mfcc(samples).T.astype(np.float32))
        return net.forward_aud(torch.stack([cc[None, :, 4 * i : 4 * i + 20] for i in range(n)]))

    k = 3
    delayed = np.concatenate([np.zeros(k * 640), audio[: -k * 640]])
    n = 40
    late_audio = sync_scores(aud_feats(audio, n), aud_feats(delayed, n), vshift=8)  # audio k frames late
    assert late_audio["offset"] == -k and late_audio["sync_c"] > 0
    late_video = sync_scores(aud_feats(delayed, n), aud_feats(audio, n), vshift=8)  # video k frames late
    assert late_video["offset"] == k


def test_full_pipeline_random_weights(tmp_path) -> None:
    torch.manual_seed(0)
    net = SyncNetV2().eval()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "syncnet_v2.model")
    net = load_syncnet(tmp_path / "syncnet_v2.model")
    frames = moving_frames(12, 96, 80, seed=0)
    crops = face_crops(frames, person_keypoints(12, 80, 96))
    assert crops.shape == (12, 224, 224, 3)
    audio = np.random.default_rng(1).normal(scale=0.1, size=12 * 640).astype(np.float32)
    out = sync_video(net, crops, audio, vshift=3)
    assert out["windows"] == 7 and -3 <= out["offset"] <= 3 and np.isfinite(out["sync_c"]) and out["sync_d"] > 0
    with pytest.raises(ValueError, match="at least 6 frames"):
        sync_video(net, crops[:5], audio)
    assert face_crops(frames, np.zeros((12, 133, 3), np.float32)) is None
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, tmp_path / "bad.model")
    with pytest.raises(ValueError, match="does not fit syncnet_v2"):
        load_syncnet(tmp_path / "bad.model")


def test_resample_to_25_fps() -> None:
    assert resample_indices(50, 50.0).tolist() == list(range(0, 50, 2))
    assert resample_indices(10, 25.0).tolist() == list(range(10))
    with pytest.raises(ValueError, match="frame rate"):
        resample_indices(10, 0.0)


class _Payload:
    """A pickled global no weights file should carry."""


def test_weight_files_load_through_the_allowlist_without_network_code(tmp_path) -> None:
    """SyncNet and the FID Inception read through ``safe_torch_load``; ``cyberhost evaluate`` imports no denoiser."""
    from cyberhost.evaluation.inception import load_feature_extractor
    from cyberhost.weights.files import UnsafeCheckpointError

    torch.save({"netcnnaud.0.weight": torch.zeros(1), "extra": _Payload()}, tmp_path / "odd.model")
    for load in (load_syncnet, load_feature_extractor):
        with pytest.raises(UnsafeCheckpointError, match="odd.model"):
            load(tmp_path / "odd.model")
    script = ("import sys, cyberhost.evaluation.evaluate, cyberhost.evaluation.cli\n"
              "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'lightning')"
              " or m.startswith(('cyberhost.models', 'cyberhost.training'))))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout, proc.stdout[-2000:]
