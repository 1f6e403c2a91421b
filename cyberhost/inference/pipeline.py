"""Image + audio -> talking-body video with a trained CyberHost network (paper Sec. 3-4).

One generation is a loop over *segments* of ``num_frames`` frames (training's clip length, 12):

1. once: the reference conditions (crop, skeleton map, face/hand crops, movement map; see
   :mod:`.conditions`) and the VAE latent of the reference;
2. per segment: the audio tokens of the segment's audio window, cut exactly as a training
   sample's audio is cut (wav2vec2 then sees the context it saw in training); the reference net runs **once** on the reference latent (plus its skeleton
   map) and the ``num_motion`` motion frames (the last 4 generated latents; the reference
   latent repeated for the first segment), giving the spatial and temporal features that every
   sampling step reuses; then DDIM with two-scale CFG (reference 2.5, audio 4.5) through
   :class:`cyberhost.diffusion.GuidedSampler`; then VAE decoding in chunks straight into the
   mp4 encoder, so no more than one segment of frames is ever held.

The video has ``ceil(duration * fps)`` frames; the last segment is generated in full on
zero-padded audio and cut. The audio track of the mp4 is the input audio.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cyberhost.data.keypoints import KeypointBackend, MediaPipeHolistic
from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.data.transforms import TransformConfig, audio_window, to_maps, to_unit
from cyberhost.diffusion import GuidedSampler, NoiseSchedule, SamplerConfig
from cyberhost.models import CyberHost, ReferenceFeatures

from .conditions import (
    ReferenceConditions,
    draw_driving_maps,
    driving_keypoints,
    num_output_frames,
    prepare_reference,
    resolve_clarity,
)
from .errors import AudioReadError, GenerateError
from .loading import InferenceSettings
from .video import VideoWriter

log = logging.getLogger(__name__)

MODES = ("audio", "video", "multimodal")


@dataclass
class GenerateConfig:
    """Options of one generation (the CLI flags of ``cyberhost generate``).

    Attributes:
        mode: ``"audio"`` (paper's main mode), ``"video"`` (driving skeletons replace the
            movement map) or ``"multimodal"`` (driving hand keypoints + audio).
        steps: DDIM steps (not in the paper; 25-40 is the peers' range).
        ref_scale: reference guidance scale (paper: 2.5).
        audio_scale: audio guidance scale (paper: 4.5).
        eta: DDIM eta (0 = deterministic).
        seed: seed of the initial noise (CPU generator: the same on every device).
        height: output height (multiple of 8); None = training bucket nearest the reference.
        width: output width; None = as ``height``.
        hand_clarity: ``"high"``, ``"reference"`` or a number (Hand Clarity Score control).
        decode_chunk: frames per VAE decode call (lower = less memory).
        num_frames: frames per segment; 0 = training's clip length.
        num_motion: motion frames; 0 = training's count.
        batch_cfg: run the three CFG branches as one batch of 3 (fewer, larger kernels; default).
        align_driving: align driving keypoints to the reference (thorax, shoulder width).
        max_frames: cut the video after this many frames (None = the whole audio).
        autocast: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (no autocast); bf16 only pays on a GPU.
        crf: x264 quality (lower = better, 18 is visually lossless).
    """

    mode: str = "audio"
    steps: int = 25
    ref_scale: float = 2.5
    audio_scale: float = 4.5
    eta: float = 0.0
    seed: int = 0
    height: int | None = None
    width: int | None = None
    hand_clarity: str | float = "high"
    decode_chunk: int = 8
    num_frames: int = 0
    num_motion: int = 0
    batch_cfg: bool = True
    align_driving: bool = True
    max_frames: int | None = None
    autocast: str = "fp32"
    crf: int = 18

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 1 or self.decode_chunk < 1:
            raise ValueError("steps and decode_chunk must be >= 1")
        if self.num_frames < 0 or self.num_motion < 0:
            raise ValueError("num_frames and num_motion must be >= 0 (0 = training's value)")
        if (self.height is None) != (self.width is None):
            raise ValueError("give both height and width, or neither")
        if self.autocast not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"autocast must be 'bf16', 'fp16' or 'fp32', got {self.autocast!r}")


@dataclass
class GenerationResult:
    """What a generation produced.

    Attributes:
        num_frames: frames of the video.
        fps: frame rate.
        segments: sampling segments run.
        size: ``(height, width)``.
        path: the mp4, or None when none was written.
        frames: ``(N, H, W, 3)`` uint8 when no output file was asked for, else None.
        seconds: wall time of the generation.
    """

    num_frames: int
    fps: float
    segments: int
    size: tuple[int, int]
    path: Path | None
    frames: np.ndarray | None
    seconds: float


# ----------------------------------------------------------------------------- inputs


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of an image file (any format OpenCV reads)."""
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"reference image {path} does not exist")
    image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise GenerateError(f"cannot read the reference image {path} (not an image format OpenCV reads)")
    return np.ascontiguousarray(image[..., ::-1])


def load_audio(path: str | Path) -> np.ndarray:
    """Mono float32 16 kHz samples of any file PyAV reads.

    Raises:
        AudioReadError: naming the file and the reason (missing, not media, no audio stream, empty).
    """
    from cyberhost.evaluation.io import read_audio

    try:
        audio = read_audio(path, AUDIO_SAMPLE_RATE)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise AudioReadError(f"cannot read audio from {path}: {err}") from err
    except Exception as err:  # PyAV decoder errors
        raise AudioReadError(f"cannot read audio from {path}: {type(err).__name__}: {err}") from err
    if audio.size == 0:
        raise AudioReadError(f"cannot read audio from {path}: it decodes to no samples")
    if not np.isfinite(audio).all():
        raise AudioReadError(f"cannot read audio from {path}: it decodes to NaN/inf samples")
    return audio


def _unit(images: Tensor, device: torch.device) -> Tensor:
    """uint8 images ``(..., 3, H, W)`` -> float ``[-1, 1]`` on ``device`` (training's :func:`to_unit`)."""
    return to_unit(images.to(device))


def _maps(images: Tensor, device: torch.device) -> Tensor:
    """uint8 condition maps ``(..., 3, H, W)`` -> float ``[0, 1]`` on ``device`` (training's :func:`to_maps`)."""
    return to_maps(images.to(device))


def _to_uint8(images: Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in ``[-1, 1]`` -> ``(N, H, W, 3)`` uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def audio_tokens(model: CyberHost, audio: np.ndarray, start: int, transform: TransformConfig,
                 device: torch.device) -> Tensor:
    """Audio tokens ``(1, F, K, D)`` of the ``transform.num_frames`` frames from frame ``start``.

    The window is cut exactly as training cuts a sample's audio (:func:`audio_window`, zero
    samples past the end), so wav2vec2 and the per-frame context see what they saw in training.
    """
    wave = audio_window({"audio": audio}, start, transform)
    return model.encode_audio(wave[None].to(device), transform.num_frames)


# ----------------------------------------------------------------------------- denoisers


def _repeat_features(feats: ReferenceFeatures, n: int) -> ReferenceFeatures:
    def rep(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.repeat(n, *([1] * (t.dim() - 1)))

    return ReferenceFeatures(
        spatial={k: rep(v) for k, v in feats.spatial.items()},
        motion=None if feats.motion is None else {k: rep(v) for k, v in feats.motion.items()},
        face_id=rep(feats.face_id), hand_id=rep(feats.hand_id),
    )  # fmt: skip


def batched_cfg_denoiser(model: CyberHost, reference: ReferenceFeatures, movement: Tensor | None,
                         tokens: Tensor | None, clarity: Tensor | None) -> Callable[[Tensor, Tensor, bool, bool], Tensor]:
    """A ``GuidedSampler`` denoiser that computes the three CFG branches in one batch of 3.

    The sampler asks for ``(ref, audio)`` first at every step; that call runs
    ``[(-,-), (ref,-), (ref,audio)]`` together (with ``ref_keep``/``audio_keep``, exactly as
    condition dropout in training) and the next two calls at the same ``x`` are served from it.
    """
    ref3 = _repeat_features(reference, 3)
    cache: dict[str, object] = {}

    def rep(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.repeat(3, *([1] * (t.dim() - 1)))

    def denoise(x: Tensor, t: Tensor, use_reference: bool, use_audio: bool) -> Tensor:
        if use_reference and use_audio:
            dev = x.device
            ref_keep = torch.tensor([False, True, True], device=dev).repeat_interleave(x.shape[0])
            audio_keep = torch.tensor([False, False, True], device=dev).repeat_interleave(x.shape[0])
            out = model(rep(x), rep(t), ref3, rep(movement), rep(tokens), rep(clarity),
                        ref_keep=ref_keep, audio_keep=audio_keep).sample
            uncond, ref_only, full = out.chunk(3)
            cache.update(x=x, outs={(False, False): uncond, (True, False): ref_only})
            return full
        if cache.get("x") is not x:
            raise RuntimeError("batched CFG expects the (reference, audio) branch first at every step")
        return cache["outs"][(use_reference, use_audio)]  # type: ignore[index]

    return denoise


# ----------------------------------------------------------------------------- generation


def _autocast(device: torch.device, name: str) -> torch.autocast:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _driving(driving: str | Path | tuple[np.ndarray, float] | None) -> tuple[np.ndarray, float, str]:
    if driving is None:
        raise GenerateError("video and multimodal modes need a driving video (--driving-video)")
    if isinstance(driving, tuple):
        return driving[0], driving[1], "<array>"
    from cyberhost.evaluation.io import read_video

    try:
        frames, fps = read_video(driving)
    except (FileNotFoundError, ValueError) as err:
        raise GenerateError(f"cannot read the driving video {driving}: {err}") from err
    return frames, fps, str(driving)


@torch.inference_mode()
def generate_video(
    model: CyberHost,
    image: str | Path | np.ndarray | ReferenceConditions,
    audio: str | Path | np.ndarray | None,
    output: str | Path | None = None,
    *,
    settings: InferenceSettings | None = None,
    config: GenerateConfig | None = None,
    backend: KeypointBackend | None = None,
    driving: str | Path | tuple[np.ndarray, float] | None = None,
    frames_dir: str | Path | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Generate a talking-body video from a reference image and audio with an in-memory model.

    Args:
        model: a stage-2 :class:`CyberHost` (any device; its mode is restored afterwards).
        image: reference image file, ``(H, W, 3)`` uint8 RGB array, or prepared conditions.
        audio: audio file (anything PyAV reads), mono float32 16 kHz samples, or None (video
            mode only: the driving video's length, no audio conditioning).
        output: mp4 to write (H.264 + the audio as AAC); None = return the frames in memory.
        settings: what training used (clip length, fps, schedule, buckets); None = the
            model config with default transform/schedule/bucket settings.
        config: generation options.
        backend: keypoint backend; None = MediaPipe holistic (offline).
        driving: driving video file or ``(frames, fps)`` for the video/multimodal modes.
        frames_dir: also save every frame as PNG here.
        progress: show a tqdm bar over segments x steps.

    Returns:
        What was generated (frames in memory only when ``output`` is None).

    Raises:
        NoPersonError, AudioReadError, GenerateError: unusable inputs, naming them.
    """
    start = time.perf_counter()
    config = config or GenerateConfig()
    settings = settings or InferenceSettings(model=model.config)
    if model.config.stage != 2:
        raise GenerateError("audio-driven generation needs a stage-2 network")
    tcfg = settings.transform
    fps = tcfg.fps
    seg = config.num_frames or tcfg.num_frames
    seg_transform = dataclasses.replace(tcfg, num_frames=seg)
    num_motion = config.num_motion or tcfg.num_motion
    device = next(model.parameters()).device
    size = None if config.height is None else (config.height, config.width)
    if backend is None and (config.mode != "audio" or not isinstance(image, ReferenceConditions)):
        backend = MediaPipeHolistic(static_image_mode=True)  # only built when keypoints are needed

    if isinstance(audio, str | Path):
        wave: np.ndarray | None = load_audio(audio)
    else:
        wave = None if audio is None else np.asarray(audio, np.float32).reshape(-1)
    if wave is None and config.mode != "video":
        raise GenerateError(f"{config.mode} mode needs audio")
    if isinstance(image, ReferenceConditions):
        ref = image
    else:
        name = str(image) if isinstance(image, str | Path) else "<array>"
        array = load_image(image) if isinstance(image, str | Path) else image
        ref = prepare_reference(array, backend, tcfg, settings.buckets, size, name)

    drive_maps = None
    if config.mode != "audio":
        frames, src_fps, dname = _driving(driving)
        n_drive = round(len(frames) / (src_fps or fps) * fps)
        total = num_output_frames(len(wave), AUDIO_SAMPLE_RATE, fps) if wave is not None else max(1, n_drive)
        seq = driving_keypoints(frames, src_fps, fps, total, backend, tcfg, ref, dname, config.align_driving)
        drive_maps = draw_driving_maps(seq, config.mode, ref, tcfg.min_confidence)  # (N, 3, H, W) uint8
        del frames
    else:
        total = num_output_frames(len(wave), AUDIO_SAMPLE_RATE, fps)
    if config.max_frames is not None:
        total = max(1, min(total, config.max_frames))
    segments = -(-total // seg)
    h, w = ref.size

    was_training = model.training
    model.eval()
    track = None if wave is None else wave[: round(total / fps * AUDIO_SAMPLE_RATE)]  # cut with --max-frames
    writer = VideoWriter(output, fps, ref.size, track, AUDIO_SAMPLE_RATE, config.crf, frames_dir) if output else None
    kept: list[np.ndarray] = []
    sampler = GuidedSampler(NoiseSchedule(settings.schedule).sampling_scheduler(),
                            SamplerConfig(config.steps, config.ref_scale, config.audio_scale, config.eta))
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(total=segments * config.steps, desc="generate", unit="step", disable=not progress)
    try:
        with _autocast(device, config.autocast):
            ref_image = _unit(ref.image[None], device)  # (1, 3, H, W)
            ref_latent = model.encode_images(ref_image)  # (1, 4, h, w)
            skeleton = _maps(ref.skeleton[None], device)
            # absent face/hands are black crops, exactly as in training samples
            face, hands = _unit(ref.face[None], device), _unit(ref.hands[None], device)
            clarity = torch.from_numpy(resolve_clarity(config.hand_clarity, ref)).to(device)
            clarity = clarity.view(1, 1, 2).expand(1, seg, 2)  # (1, F, 2)
            box = _maps(ref.movement_map[None, None], device).expand(1, seg, 3, h, w)
            motion = ref_latent[:, None].expand(1, num_motion, *ref_latent.shape[1:])  # (1, M, 4, h, w)
            for s in range(segments):
                lo, n_keep = s * seg, min(seg, total - s * seg)
                bar.set_postfix(segment=f"{s + 1}/{segments}")
                feats = model.encode_reference(ref_latent, skeleton, motion if num_motion else None, face, hands)
                if drive_maps is not None:
                    idx = torch.arange(lo, lo + seg).clamp_max(len(drive_maps) - 1)
                    movement = _maps(drive_maps[idx][None], device)  # (1, F, 3, H, W)
                else:
                    movement = box
                seg_tokens = None if wave is None else audio_tokens(model, wave, lo, seg_transform, device)
                if config.batch_cfg:
                    denoise = batched_cfg_denoiser(model, feats, movement, seg_tokens, clarity)
                else:
                    denoise = model.denoiser(feats, movement, seg_tokens, clarity)

                def ticking(x: Tensor, t: Tensor, use_ref: bool, use_audio: bool, _d=denoise) -> Tensor:
                    if use_ref and use_audio:
                        bar.update(1)
                    return _d(x, t, use_ref, use_audio)

                latents = sampler.sample(ticking, (1, seg, *ref_latent.shape[1:]), device, generator)
                if num_motion:
                    motion = latents[:, -num_motion:] if seg >= num_motion else torch.cat(
                        [motion, latents], dim=1)[:, -num_motion:]
                for c in range(0, n_keep, config.decode_chunk):
                    images = _to_uint8(model.decode_latents(latents[0, c : min(c + config.decode_chunk, n_keep)]))
                    if writer is not None:
                        writer.write(images)
                    else:
                        kept.append(images)
    finally:
        bar.close()
        model.state.clear()
        model.train(was_training)
        if writer is not None:
            writer.close()
    return GenerationResult(
        num_frames=total, fps=fps, segments=segments, size=ref.size, path=Path(output) if output else None,
        frames=np.concatenate(kept) if kept else None, seconds=time.perf_counter() - start,
    )  # fmt: skip
