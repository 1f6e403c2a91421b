"""SSIM/PSNR against scikit-image, Fréchet distance against SciPy, and the FID network plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.image.fid import FrechetInceptionDistance

from cyberhost.evaluation.frechet import FeatureStats, frechet_distance
from cyberhost.evaluation.inception import FIDInceptionV3, load_feature_extractor, resize_bilinear_tf1
from cyberhost.evaluation.metrics import frame_metrics
from tests.evaluation.helpers import MeanColour, save_script


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-25, 25, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_ssim_psnr_match_scikit_image() -> None:
    gen, gt = _pair()
    got = frame_metrics(gen, gt)
    # torchmetrics averages the full SSIM map of reflect-padded (by 5) images; scikit-image sees the
    # same numbers when given the padded images and its map is cropped back. Same gaussian 11 / 1.5,
    # population covariance, data range 1. Tolerance 1e-6 (both in float64).
    ssims = []
    for g, t in zip(gen / 255.0, gt / 255.0, strict=True):
        pad = ((5, 5), (5, 5), (0, 0))
        _, smap = structural_similarity(
            np.pad(g, pad, mode="reflect"),
            np.pad(t, pad, mode="reflect"),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
            full=True,
        )
        ssims.append(smap[5:-5, 5:-5].mean())
    psnrs = [peak_signal_noise_ratio(t, g, data_range=255) for g, t in zip(gen, gt, strict=True)]
    assert got["ssim"] == pytest.approx(np.mean(ssims), abs=1e-6)
    assert got["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)


def test_identical_frames_and_shape_mismatch() -> None:
    gen, _ = _pair()
    assert frame_metrics(gen, gen) == {"ssim": pytest.approx(1.0), "psnr": 100.0}
    with pytest.raises(ValueError, match="differ in shape"):
        frame_metrics(gen, gen[:, :-2])


def _random_gaussian(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(dim, dim))
    return rng.normal(size=dim), a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(1)
    (m1, s1), (m2, s2) = _random_gaussian(rng, 12), _random_gaussian(rng, 12)
    ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    got = frechet_distance(*(torch.from_numpy(x) for x in (m1, s1, m2, s2)))
    assert got == pytest.approx(ref, rel=1e-8)


def test_frechet_diagonal_closed_form() -> None:
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # = 5 + (1 + 1 + 4)
    got = frechet_distance(
        torch.tensor(m1), torch.diag(torch.tensor(v1)), torch.tensor(m2), torch.diag(torch.tensor(v2))
    )
    assert closed == pytest.approx(11.0) and got == pytest.approx(closed, abs=1e-9)


def test_feature_stats_and_torchmetrics_fid_agree_with_numpy() -> None:
    rng = np.random.default_rng(2)
    real = rng.integers(0, 256, (30, 3, 16, 16), dtype=np.uint8)
    fake = np.clip(real.astype(int) + 40, 0, 255).astype(np.uint8)
    net = MeanColour()
    feats = {k: net(torch.from_numpy(v)).double().numpy()[:, :6] for k, v in (("real", real), ("fake", fake))}
    mu = {k: f.mean(0) for k, f in feats.items()}
    cov = {k: np.cov(f, rowvar=False) for k, f in feats.items()}
    ref = np.sum((mu["real"] - mu["fake"]) ** 2) + np.trace(
        cov["real"] + cov["fake"] - 2 * np.real(scipy.linalg.sqrtm(cov["real"] @ cov["fake"]))
    )
    stats = {k: FeatureStats(6) for k in feats}
    for k, f in feats.items():
        stats[k].update(f[:10])
        stats[k].update(f[10:])
    assert stats["fake"].distance(stats["real"]) == pytest.approx(ref, rel=1e-6)

    class Six(torch.nn.Module):
        num_features = 6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return net(x)[:, :6]

    fid = FrechetInceptionDistance(feature=Six())
    fid.update(torch.from_numpy(real), real=True)
    fid.update(torch.from_numpy(fake), real=False)
    assert float(fid.compute()) == pytest.approx(ref, rel=1e-4)


def test_tf1_resize_matches_direct_formula() -> None:
    x = torch.arange(2 * 5 * 7, dtype=torch.float64).reshape(1, 2, 5, 7) ** 1.5
    out = resize_bilinear_tf1(x, (3, 11))
    ref = np.zeros((2, 3, 11))
    img = x[0].numpy()
    for i in range(3):
        for j in range(11):
            sy, sx = i * 5 / 3, j * 7 / 11  # TF1: no half-pixel centres
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
            dy, dx = sy - y0, sx - x0
            top = img[:, y0, x0] * (1 - dx) + img[:, y0, x1] * dx
            bottom = img[:, y1, x0] * (1 - dx) + img[:, y1, x1] * dx
            ref[:, i, j] = top * (1 - dy) + bottom * dy
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-12)


def test_fid_inception_loads_state_dict_and_torchscript(tmp_path) -> None:
    net = FIDInceptionV3()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "pt_inception.pth")
    loaded = load_feature_extractor(tmp_path / "pt_inception.pth")
    images = torch.randint(0, 256, (2, 3, 80, 64), dtype=torch.uint8)
    with torch.no_grad():
        feats = loaded(images)
    assert feats.shape == (2, 2048) and loaded.num_features == 2048
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit the FID Inception-v3"):
        load_feature_extractor(tmp_path / "wrong.pth")
    scripted = load_feature_extractor(save_script(MeanColour(), tmp_path / "feat.pt"))
    assert scripted.num_features == 7 and scripted(images).shape == (2, 7)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_feature_extractor(tmp_path / "missing.pth")


def test_ground_truth_matching_crop_boxes_and_notes() -> None:
    from cyberhost.evaluation.metrics import centre_crop_box, match_ground_truth

    assert centre_crop_box((100, 40), (48, 64)) == (35, 0, 30, 40)  # taller: top and bottom go
    assert centre_crop_box((96, 192), (48, 64)) == (0, 32, 96, 128)  # wider: the sides go
    assert centre_crop_box((96, 128), (48, 64)) == (0, 0, 96, 128)  # same aspect: nothing goes
    gt = np.random.default_rng(0).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    same, note = match_ground_truth(gt, (96, 128))
    assert same is gt and note is None
    small, note = match_ground_truth(gt, (48, 64))
    assert small.shape == (2, 48, 64, 3) and note == "ground truth 128x96 resized to 64x48 (the generated size)"
    crop, note = match_ground_truth(np.pad(gt, ((0, 0), (0, 0), (10, 10), (0, 0))), (96, 128))
    assert np.array_equal(crop, gt) and "centre-cropped to 128x96" in note and "resized" not in note
