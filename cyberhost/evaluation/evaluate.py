"""Run every configured metric over a list of video pairs and write JSON, CSV and TensorBoard.

Videos are processed one pair at a time (memory holds one pair); FID and FVD accumulate feature
statistics across pairs and are computed once at the end. A metric whose weights are not
configured, or that cannot be computed for a video (no face, no audio track, no ground truth),
is reported under ``skipped`` with the reason; no number is ever made up. The protocol of each
metric is documented in :mod:`~cyberhost.evaluation.metrics`, :mod:`~cyberhost.evaluation.face`,
:mod:`~cyberhost.evaluation.fvd`, :mod:`~cyberhost.evaluation.inception` and
:mod:`~cyberhost.evaluation.syncnet`; :data:`PROTOCOL` records it in every output file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from cyberhost.evaluation import fvd as fvd_mod
from cyberhost.evaluation import syncnet as sync_mod
from cyberhost.evaluation.face import FaceEmbedder, align_faces, csim, load_face_embedder
from cyberhost.evaluation.frechet import FeatureStats
from cyberhost.evaluation.inception import load_feature_extractor
from cyberhost.evaluation.metrics import (
    KeypointFn,
    average_keypoint_distance,
    backend_keypoint_fn,
    frame_metrics,
    hand_keypoint_confidence,
    hand_keypoint_variance,
    match_ground_truth,
)
from cyberhost.evaluation.pairs import VideoPair
from cyberhost.media import read_audio, read_video

__all__ = ["ALL_METRICS", "PROTOCOL", "WEIGHT_FILES", "EvalConfig", "Evaluator", "write_outputs"]

log = logging.getLogger(__name__)

ALL_METRICS = ("ssim", "psnr", "fid", "fvd", "csim", "hkc", "hkv", "akd", "sync")
PER_VIDEO = ("ssim", "psnr", "csim", "hkc", "hkv", "akd", "akd_norm", "sync_c", "sync_d", "sync_offset")
FRAME_COUNTS = ("akd_frames", "akd_skipped_frames")
"""Per-video frame counts that go into ``per_video.csv`` and, summed over videos, into ``counts``."""
WEIGHT_FILES = {
    "fid": "pt_inception-2015-12-05-6726825d.pth",
    "fvd": "i3d_torchscript.pt",
    "csim": "w600k_r50.onnx",
    "sync": "syncnet_v2.model",
}
"""File names looked up in ``--weights-dir`` when a metric's weights are not given explicitly."""
PROTOCOL = {
    "version": 3,
    "changes": "3 adds AKD and akd_norm; SSIM, PSNR, FID, FVD, CSIM, HKC, HKV and Sync are computed as in 2",
    "frames": "every decoded frame, paired by index; differing counts are an error unless --length-mismatch truncate",
    "ground_truth_size": "ground truth of another size is centre-cropped to the generated aspect ratio, then resized "
    "to the generated size (bilinear, antialiased); generated frames are never resampled; notes record it",
    "ssim": "all frames, generated resolution, RGB [0,1], gaussian 11/1.5, K=(0.01,0.03), reflect-padded full map",
    "psnr": "all frames, generated resolution, RGB [0,1], capped at 100 dB; mean over frames then videos",
    "fid": "generated vs ground-truth frames (every fid_stride-th), TF1-bilinear 299x299, 2048-d pool3",
    "fvd": "non-overlapping 16-frame clips, 224 short side + centre crop, [-1,1], I3D 400-d logits",
    "csim": "ArcFace 112x112 5-point alignment from keypoints, cosine(reference, frame), mean over frames with a face",
    "hkc": "mean confidence of the 42 hand points over frames with both shoulders (conf>=0.3)",
    "hkv": "std of hand point x/y (conf>=0.3) over the clip at 512 short side, mean over points and axes",
    "akd": "body 0-16 + hands 91-132 of generated vs ground-truth frame (conf>=0.3 in both), pixels of the generated "
    "size; mean over points, then frames with a point (others counted as akd_skipped_frames), then videos; "
    "akd_norm = akd / median ground-truth body-box diagonal",
    "sync": "syncnet_v2, 25 fps face crops from keypoints, MFCC 13, vshift 15; SyncD=min dist, SyncC=median-min",
    "non_finite": "a NaN/inf value is reported as null (JSON) / empty (CSV) with the reason under skipped",
}


@dataclass
class EvalConfig:
    """What to compute and with which weights.

    Attributes:
        metrics: subset of ``ssim psnr fid fvd csim hkc hkv akd sync``.
        weights_dir: folder searched for the standard weight file names (:data:`WEIGHT_FILES`).
        fid_weights: FID Inception-v3 state dict or TorchScript feature network.
        i3d_weights: I3D TorchScript for FVD.
        face_weights: ArcFace ONNX or TorchScript for CSIM.
        syncnet_weights: ``syncnet_v2.model`` for SyncC/SyncD.
        keypoints: keypoint backend for HKC/HKV/AKD/CSIM/Sync (``mediapipe``, ``rtmlib``, ``none``).
        keypoint_options: options of the backend (rtmlib: ``det``, ``pose`` ONNX paths).
        length_mismatch: ``error`` or ``truncate`` (to the shorter) when frame counts differ.
        fid_stride: use every n-th frame for FID.
        i3d_kwargs: keyword arguments of each I3D call.
        device: torch device for the networks.
        batch_size: images per forward.
    """

    metrics: tuple[str, ...] = ALL_METRICS
    weights_dir: Path | None = None
    fid_weights: Path | None = None
    i3d_weights: Path | None = None
    face_weights: Path | None = None
    syncnet_weights: Path | None = None
    keypoints: str = "mediapipe"
    keypoint_options: dict[str, Any] = field(default_factory=dict)
    length_mismatch: str = "error"
    fid_stride: int = 1
    i3d_kwargs: dict[str, Any] | None = None
    device: str = "cpu"
    batch_size: int = 16

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
        if self.length_mismatch not in ("error", "truncate"):
            raise ValueError(f"length_mismatch must be 'error' or 'truncate', got {self.length_mismatch!r}")
        if self.fid_stride < 1 or self.batch_size < 1:
            raise ValueError("fid_stride and batch_size must be >= 1")

    def weights(self, metric: str) -> tuple[Path | None, str]:
        """The weight file of ``metric`` and, when there is none, why."""
        explicit = {
            "fid": self.fid_weights,
            "fvd": self.i3d_weights,
            "csim": self.face_weights,
            "sync": self.syncnet_weights,
        }[metric]
        if explicit is not None:
            return Path(explicit), ""
        if self.weights_dir is not None and (Path(self.weights_dir) / WEIGHT_FILES[metric]).is_file():
            return Path(self.weights_dir) / WEIGHT_FILES[metric], ""
        flag = {"fid": "--fid-weights", "fvd": "--i3d-weights", "csim": "--face-weights", "sync": "--syncnet-weights"}[
            metric
        ]
        return None, f"no weights: pass {flag} or put {WEIGHT_FILES[metric]} in --weights-dir"


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read reference image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _metric_of(key: str) -> str:
    """The ``--metrics`` name a per-video value belongs to (``sync_c`` -> ``sync``, ``akd_norm`` -> ``akd``)."""
    return "sync" if key.startswith("sync") else "akd" if key == "akd_norm" else key


def _skip_key(key: str) -> str:
    """Where a per-video value's reason goes under ``skipped`` (SyncC/SyncD share one; akd_norm has its own)."""
    return "sync" if key.startswith("sync") else key


def _null_non_finite(record: dict[str, Any]) -> None:
    """Per-video NaN/inf values become None, with the reason under ``skipped`` (never averaged, never written)."""
    for metric in PER_VIDEO:
        value = record.get(metric)
        if value is not None and not _finite(float(value)):
            record[metric] = None
            record["skipped"].setdefault(
                _skip_key(metric),
                f"{metric} came out {value} (degenerate input, e.g. a flat face crop or silent audio)",
            )


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN), numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nanmean(values: list[float]) -> float:
    good = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(good)) if good else math.nan


class Evaluator:
    """Loads the configured networks once and evaluates pairs."""

    def __init__(
        self,
        config: EvalConfig,
        keypoint_fn: KeypointFn | None = None,
        face_embedder: FaceEmbedder | None = None,
        syncnet: sync_mod.SyncNetV2 | None = None,
    ) -> None:
        """Load what the config names; injected parts (for tests or callers) take precedence.

        Args:
            config: the evaluation config.
            keypoint_fn: replaces the configured keypoint backend.
            face_embedder: replaces the configured face embedder.
            syncnet: replaces the configured SyncNet.
        """
        self.config = config
        self.skipped: dict[str, str] = {}
        wanted = set(config.metrics)
        self.fid: FrechetInceptionDistance | None = None
        self.i3d: fvd_mod.I3DFeatures | None = None
        self.face, self.sync = face_embedder, syncnet
        for metric in ("fid", "fvd", "csim", "sync"):
            if metric not in wanted or (metric == "csim" and self.face) or (metric == "sync" and self.sync):
                continue
            path, reason = config.weights(metric)
            if path is None:
                self.skipped[metric] = reason
            elif metric == "fid":
                net = load_feature_extractor(path)
                self.fid = FrechetInceptionDistance(feature=net, normalize=False).to(config.device)
            elif metric == "fvd":
                self.i3d = fvd_mod.I3DFeatures(
                    path, config.i3d_kwargs, config.device, batch=max(1, config.batch_size // 4)
                )
            elif metric == "csim":
                self.face = load_face_embedder(path, config.batch_size, config.device)
            else:
                self.sync = sync_mod.load_syncnet(path).to(config.device)
        needs_kps = wanted & {"csim", "hkc", "hkv", "akd", "sync"}
        self.keypoint_fn = keypoint_fn
        if needs_kps and keypoint_fn is None:
            if config.keypoints == "none":
                for metric in needs_kps:
                    self.skipped.setdefault(metric, "keypoints disabled (--keypoints none)")
            else:
                self.keypoint_fn = backend_keypoint_fn(config.keypoints, **config.keypoint_options)
        self.fvd_stats: dict[str, FeatureStats | None] = {"generated": None, "ground_truth": None}
        self.gt_missing = 0

    def _active(self, metric: str) -> bool:
        return metric in self.config.metrics and metric not in self.skipped

    def evaluate_pair(self, pair: VideoPair) -> dict[str, Any]:
        """Per-video metrics of one pair (also feeds the FID/FVD statistics)."""
        gen, fps = read_video(pair.generated)
        record: dict[str, Any] = {
            "name": pair.name,
            "generated": str(pair.generated),
            "ground_truth": str(pair.ground_truth or ""),
        }
        record.update({"frames": len(gen), "fps": fps, "notes": [], "skipped": {}})
        gt = None
        if pair.ground_truth is not None:
            gt, gt_fps = read_video(pair.ground_truth)
            if len(gt) != len(gen):
                if self.config.length_mismatch == "error":
                    raise ValueError(
                        f"{pair.name}: generated video has {len(gen)} frames, ground truth {len(gt)} "
                        f"({pair.generated} vs {pair.ground_truth}); pass --length-mismatch truncate to compare the first "
                        f"{min(len(gen), len(gt))}"
                    )
                n = min(len(gen), len(gt))
                record["notes"].append(f"truncated to {n} frames (generated {len(gen)}, ground truth {len(gt)})")
                gen, gt = gen[:n], gt[:n]
                record["frames"] = n
            if abs(gt_fps - fps) > 0.01:
                record["notes"].append(f"frame rates differ: generated {fps:g}, ground truth {gt_fps:g}")
            gt, note = match_ground_truth(gt, gen.shape[1:3])
            if note:
                record["notes"].append(note)
        else:
            self.gt_missing += 1
        self._reference_metrics(gen, gt, record)
        self._keypoint_metrics(pair, gen, fps, gt, record)
        _null_non_finite(record)
        return record

    def _reference_metrics(self, gen: np.ndarray, gt: np.ndarray | None, record: dict[str, Any]) -> None:
        for metric in ("ssim", "psnr"):
            if metric in self.config.metrics and gt is None:
                record["skipped"][metric] = "no ground truth"
        if gt is not None and ({"ssim", "psnr"} & set(self.config.metrics)):
            scores = frame_metrics(gen, gt)  # gt already at the generated size (match_ground_truth)
            record.update({k: v for k, v in scores.items() if k in self.config.metrics})
        if gt is None:
            return
        if self._active("fid") and self.fid is not None:
            for real, frames in ((False, gen), (True, gt)):
                self._fid_update(real, frames[:: self.config.fid_stride])
        if self._active("fvd") and self.i3d is not None:
            for key, frames in (("generated", gen), ("ground_truth", gt)):
                clips = list(fvd_mod.fvd_clips(frames))
                if clips:
                    feats = self.i3d(clips)
                    stats = self.fvd_stats[key] or FeatureStats(feats.shape[1])
                    stats.update(feats)
                    self.fvd_stats[key] = stats

    @torch.no_grad()
    def _fid_update(self, real: bool, frames: np.ndarray) -> None:
        for i in range(0, len(frames), self.config.batch_size):
            batch = torch.from_numpy(frames[i : i + self.config.batch_size]).permute(0, 3, 1, 2).contiguous()
            self.fid.update(batch.to(self.config.device), real=real)

    def _keypoint_metrics(
        self, pair: VideoPair, gen: np.ndarray, fps: float, gt: np.ndarray | None, record: dict[str, Any]
    ) -> None:
        wanted = [m for m in ("hkc", "hkv", "akd", "csim", "sync") if self._active(m)]
        if not wanted or self.keypoint_fn is None:
            return
        kps = self.keypoint_fn(gen)
        if "hkc" in wanted:
            record["hkc"] = hand_keypoint_confidence(kps)
        if "hkv" in wanted:
            record["hkv"] = hand_keypoint_variance(kps, gen.shape[1:3])
        for metric in ("hkc", "hkv"):
            if metric in record and math.isnan(record[metric]):
                record[metric] = None
                record["skipped"][metric] = "no frame with a body (both shoulders) or hand points"
        if "akd" in wanted:
            self._akd(kps, gt, record)
        if "csim" in wanted:
            self._csim(pair, gen, kps, gt, record)
        if "sync" in wanted:
            self._sync(pair, gen, fps, kps, record)

    def _akd(self, kps: np.ndarray, gt: np.ndarray | None, record: dict[str, Any]) -> None:
        """AKD of the generated keypoints against keypoints detected on the (size-matched) ground truth."""
        if gt is None:
            record["skipped"]["akd"] = "no ground truth"
            return
        result = average_keypoint_distance(kps, self.keypoint_fn(gt))
        record.update(akd_frames=result.frames, akd_skipped_frames=result.skipped_frames)
        record["akd_scale"] = result.scale
        if result.frames == 0:
            record["akd"] = record["akd_norm"] = None
            record["skipped"]["akd"] = (
                f"no frame with a body or hand point confident (>= 0.3) in both generated and ground truth "
                f"({result.skipped_frames} frames skipped)"
            )
            return
        record["akd"] = result.akd
        if math.isnan(result.akd_norm):
            record["akd_norm"] = None
            record["skipped"]["akd_norm"] = "no ground-truth frame with 2 confident body points to size the person"
        else:
            record["akd_norm"] = result.akd_norm

    def _csim(
        self, pair: VideoPair, gen: np.ndarray, kps: np.ndarray, gt: np.ndarray | None, record: dict[str, Any]
    ) -> None:
        if pair.reference_image is not None:
            ref = _read_image(pair.reference_image)
        elif gt is not None:
            ref = gt[0]
            record["notes"].append("CSIM reference: first ground-truth frame")
        else:
            record["skipped"]["csim"] = "no reference image and no ground truth"
            return
        ref_faces, _ = align_faces(ref[None], self.keypoint_fn(ref[None]))
        faces, index = align_faces(gen, kps)
        if len(ref_faces) == 0 or len(faces) == 0:
            record["skipped"]["csim"] = "no face found in the " + (
                "reference image" if len(ref_faces) == 0 else "generated video"
            )
            return
        sims = csim(self.face(ref_faces)[0], self.face(faces))
        record["csim"] = float(sims.mean())
        record["csim_frames"] = len(index)

    def _sync(self, pair: VideoPair, gen: np.ndarray, fps: float, kps: np.ndarray, record: dict[str, Any]) -> None:
        try:
            audio = read_audio(pair.audio or pair.generated, sr=sync_mod.SYNC_SR)
        except ValueError as err:
            record["skipped"]["sync"] = f"no audio: {err}"
            return
        idx = sync_mod.resample_indices(len(gen), fps)
        crops = sync_mod.face_crops(gen[idx], kps[idx])
        if crops is None:
            record["skipped"]["sync"] = "no face found in the generated video"
            return
        try:
            scores = sync_mod.sync_video(self.sync, crops, audio)
        except ValueError as err:
            record["skipped"]["sync"] = str(err)
            return
        record.update({"sync_c": scores["sync_c"], "sync_d": scores["sync_d"], "sync_offset": scores["offset"]})

    def run(self, pairs: list[VideoPair], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Evaluate all pairs; returns ``{"protocol", "config", "aggregate", "counts", "skipped", "videos"}``."""
        videos = []
        for i, pair in enumerate(pairs):
            if progress:
                progress(f"[{i + 1}/{len(pairs)}] {pair.name}")
            videos.append(self.evaluate_pair(pair))
        return self._summary(videos)

    def _summary(self, videos: list[dict[str, Any]]) -> dict[str, Any]:
        aggregate: dict[str, float | None] = {}
        counts: dict[str, int] = {}
        skipped = dict(self.skipped)
        for metric in PER_VIDEO:
            values = [v[metric] for v in videos if v.get(metric) is not None]
            base, key = _metric_of(metric), _skip_key(metric)
            if base not in self.config.metrics or base in self.skipped or metric == "sync_offset":
                continue
            counts[metric] = len(values)
            aggregate[metric] = _nanmean(values) if values else None
            if not values and key not in skipped:
                # akd_norm of a video without AKD has its reason under akd
                reasons = sorted({v["skipped"].get(key) or v["skipped"].get(base, "") for v in videos} - {""})
                skipped[key] = "; ".join(reasons) or "no value"
        if self._active("akd"):
            for name in FRAME_COUNTS:
                counts[name] = sum(v.get(name, 0) for v in videos)
        for metric in ("fid", "fvd"):
            if metric not in self.config.metrics or metric in self.skipped:
                continue
            if metric == "fid":
                n = int(min(self.fid.real_features_num_samples, self.fid.fake_features_num_samples))
            else:
                gen_s, gt_s = self.fvd_stats["generated"], self.fvd_stats["ground_truth"]
                n = min(gen_s.count if gen_s else 0, gt_s.count if gt_s else 0)
            counts[metric] = n
            if n < 2:
                aggregate[metric] = None
                unit = "frames" if metric == "fid" else "16-frame clips"
                skipped[metric] = f"needs at least 2 {unit} with ground truth on each side, got {n}"
            else:
                value = float(self.fid.compute()) if metric == "fid" else float(gen_s.distance(gt_s))
                aggregate[metric] = value if math.isfinite(value) else None
                if not math.isfinite(value):
                    skipped[metric] = f"{metric} came out {value} (singular feature statistics: too few or identical frames)"
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()}
        return {
            "protocol": PROTOCOL,
            "config": config,
            "aggregate": aggregate,
            "counts": counts,
            "skipped": skipped,
            "videos": videos,
        }


def _fmt(value: Any) -> Any:
    return "" if value is None or not _finite(value) else value


def write_outputs(
    result: dict[str, Any], out_dir: str | Path, tb_dir: str | Path | None = None, tb_step: int = 0
) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_video.csv`` and ``aggregate.csv``; log ``eval/<metric>`` scalars.

    Non-finite numbers are written as ``null`` (JSON) and empty cells (CSV); the reason is in
    ``skipped`` (:meth:`Evaluator.run` puts it there).

    Args:
        result: the output of :meth:`Evaluator.run`.
        out_dir: folder for the files (created).
        tb_dir: TensorBoard log dir (``None``: no TensorBoard).
        tb_step: global step of the scalars (e.g. the checkpoint's step).

    Returns:
        The written files by kind.
    """
    result = _json_safe(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "per_video": out / "per_video.csv", "aggregate": out / "aggregate.csv"}
    paths["json"].write_text(json.dumps(result, indent=2, allow_nan=False, default=str) + "\n")
    columns = ["name", "generated", "ground_truth", "frames", "fps", *PER_VIDEO, *FRAME_COUNTS, "skipped", "notes"]
    with paths["per_video"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for video in result["videos"]:
            row = {
                **video,
                "skipped": "; ".join(f"{k}: {v}" for k, v in video["skipped"].items()),
                "notes": "; ".join(video["notes"]),
            }
            writer.writerow([_fmt(row.get(c)) for c in columns])
    with paths["aggregate"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value", "count", "skipped"])
        names = list(result["aggregate"]) + [m for m in result["skipped"] if m not in result["aggregate"]]
        for metric in names:
            value = result["aggregate"].get(metric)
            writer.writerow([metric, _fmt(value), result["counts"].get(metric, 0), result["skipped"].get(metric, "")])
    if tb_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(tb_dir)) as writer:
            for metric, value in result["aggregate"].items():
                if value is not None:
                    writer.add_scalar(f"eval/{metric}", value, tb_step)
            if result["skipped"]:
                writer.add_text("eval/skipped", "\n".join(f"- {k}: {v}" for k, v in result["skipped"].items()), tb_step)
    return paths
