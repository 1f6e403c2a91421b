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
zero-padded audio and cut. The network hears the audio resampled to 16 kHz mono; the mp4 carries
the input audio itself (its sample rate and mono/stereo, re-encoded to AAC), cut to the video's
length. Driving videos are streamed (:mod:`.driving`) and their maps drawn per segment.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from cyberhost.data.conditions import MODE_OVERLAYS, MODES
from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.data.transforms import TransformConfig, to_unit
from cyberhost.diffusion import GuidedSampler, NoiseSchedule, SamplerConfig
from cyberhost.media import AudioFileTrack, AudioTrack, VideoWriter, read_audio
from cyberhost.media.keypoints import KeypointBackend, MediaPipeHolistic
from cyberhost.models import CyberHost
from cyberhost.models.conditioning import guided_denoiser, network_inputs
from cyberhost.models.precision import set_inference_layers

from .conditions import (
    ReferenceConditions,
    generation_clip,
    num_output_frames,
    prepare_reference,
    resolve_clarity,
    segment_conditions,
)
from .driving import DrivingVideo, driving_keypoints
from .errors import AudioReadError, GenerateError
from .loading import InferenceSettings

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number of the mmap threshold (``<malloc.h>``)."""
MMAP_THRESHOLD = 128 * 1024
"""glibc's initial mmap threshold, which generation keeps (see :func:`pin_mmap_threshold`)."""


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
        half_weights: store the network's weights in the autocast dtype for the run (VAE and
            UNets; wav2vec2 and ArcFace stay float32): no cast of every weight at every layer and
            half the weight memory; and their norms and positional embeddings compute in that dtype
            instead of autocast's float32 (:func:`~cyberhost.models.precision.set_inference_layers`).
            Changes ``model`` in place; needs bf16 or fp16 autocast.
        compile: compile the UNets' repeated blocks (``torch.compile``, regionally:
            :func:`~cyberhost.models.blocks.compile_regions`; not the VAE, which decodes each frame
            once) on first use. The first segment then waits for the compiler; it can only pay on
            long videos and repeated calls in one process.
        cuda_graphs: with ``batch_cfg`` on a CUDA device, record the network's call once per
            segment as a CUDA graph and replay it at the other steps
            (:class:`~cyberhost.models.graphs.PlannedForward`): the host no longer launches every
            kernel of every step. The same frames; the recording holds one call's activations.
            Off by default: the sd15 call keeps the GPU busy, so there is nothing to gain (BENCHMARKS.md).
        attention: the SDPA kernel family to prefer: ``"auto"`` (PyTorch's choice), ``"flash"``,
            ``"efficient"``, ``"cudnn"`` or ``"math"`` (:func:`attention_backend`).
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
    half_weights: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    attention: str = "auto"

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
        if self.half_weights and self.autocast == "fp32":
            raise ValueError("half_weights needs bf16 or fp16 autocast: half weights cannot meet float32 activations")
        if self.attention not in SDPA_BACKENDS:
            raise ValueError(f"attention must be one of {sorted(SDPA_BACKENDS)}, got {self.attention!r}")


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


def _to_uint8(images: Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in ``[-1, 1]`` -> ``(N, H, W, 3)`` uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------- generation


def speed_up(model: CyberHost, config: GenerateConfig) -> None:
    """Apply ``config.half_weights`` and ``config.compile`` to ``model`` (in place; again is a no-op)."""
    if config.half_weights:
        model.cast_frozen(AUTOCAST_DTYPES[config.autocast])
        set_inference_layers(model)
    if config.compile:
        from cyberhost.models.blocks import CompileConfig, compile_regions

        compile_regions(model, CompileConfig(enabled=True, vae=False))


SDPA_BACKENDS = {"auto": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
"""``GenerateConfig.attention`` -> the SDPA backend it allows (None: any, PyTorch picks)."""


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """Prefer SDPA backend ``name`` (``SDPA_BACKENDS``) inside; ``"auto"`` changes nothing.

    Shapes that backend has no kernel for (the VAE's one-head attention of width 512 has no flash
    kernel) fall back to the memory-efficient kernel, then to the math one.
    """
    backend = SDPA_BACKENDS[name]
    if backend is None:
        return contextlib.nullcontext()
    return sdpa_kernel(list(dict.fromkeys([backend, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])))


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The 16-bit autocast settings and their dtypes (``"fp32"``: no autocast)."""


def _autocast(device: torch.device, name: str) -> torch.autocast:
    dtype = AUTOCAST_DTYPES.get(name)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@dataclass
class _Plan:
    """Frame counts of one generation.

    Attributes:
        fps: output frame rate (training's).
        seg: frames per segment.
        num_motion: motion frames.
        total: frames of the video.
        driving_frames: frames of driving keypoints to compute (covers the last segment's padding).
        transform: training's transform settings with ``num_frames = seg``.
    """

    fps: float
    seg: int
    num_motion: int
    total: int
    driving_frames: int
    transform: TransformConfig

    @property
    def segments(self) -> int:
        """Sampling segments."""
        return -(-self.total // self.seg)


@dataclass
class _Inputs:
    """Everything a generation is conditioned on, prepared before any sampling."""

    reference: ReferenceConditions
    wave: np.ndarray | None  # 16 kHz mono: the audio the network hears
    clip: dict  # the generation clip every segment's conditions are built from
    plan: _Plan


def _conditioning_audio(audio: str | Path | np.ndarray | None) -> np.ndarray | None:
    if isinstance(audio, str | Path):
        return load_audio(audio)
    return None if audio is None else np.asarray(audio, np.float32).reshape(-1)


def output_track(audio: str | Path | np.ndarray | None, seconds: float) -> AudioTrack | AudioFileTrack | None:
    """The mp4's audio, cut to ``seconds``: an audio file's own track (rate, channels), else the given samples.

    The network hears 16 kHz mono (:func:`load_audio`); the video carries the input as it was,
    re-encoded to AAC. A file's track is decoded only while the writer encodes it, chunk by chunk.
    """
    if audio is None:
        return None
    if not isinstance(audio, str | Path):
        return AudioTrack.mono(audio, AUDIO_SAMPLE_RATE).trimmed(seconds)
    try:
        return AudioFileTrack(audio, seconds)
    except Exception as err:  # PyAV decoder errors
        raise AudioReadError(f"cannot read audio from {audio}: {type(err).__name__}: {err}") from err


def _reference(image: str | Path | np.ndarray | ReferenceConditions, backend: KeypointBackend | None,
               settings: InferenceSettings, config: GenerateConfig) -> ReferenceConditions:
    if isinstance(image, ReferenceConditions):
        return image
    size = None if config.height is None else (config.height, config.width)
    name = str(image) if isinstance(image, str | Path) else "<array>"
    array = load_image(image) if isinstance(image, str | Path) else image
    return prepare_reference(array, backend, settings.transform, settings.buckets, size, name)


def _plan(settings: InferenceSettings, config: GenerateConfig, wave: np.ndarray | None,
          video: DrivingVideo | None) -> _Plan:
    tcfg = settings.transform
    fps, seg = tcfg.fps, config.num_frames or tcfg.num_frames
    if wave is not None:
        full = num_output_frames(len(wave), AUDIO_SAMPLE_RATE, fps)
    else:  # video mode without audio: the driving video's length
        full = max(1, round(video.count() / (video.fps or fps) * fps))
    total = full if config.max_frames is None else max(1, min(full, config.max_frames))
    padded = -(-total // seg) * seg
    return _Plan(fps=fps, seg=seg, num_motion=config.num_motion or tcfg.num_motion, total=total,
                 driving_frames=min(full, padded), transform=dataclasses.replace(tcfg, num_frames=seg))


def check_mode(settings: InferenceSettings, mode: str) -> None:
    """Refuse a mode the network was not trained for (``transform.mode`` of its training run).

    Raises:
        GenerateError: naming the trained mode and the overlay that trains the asked one.
    """
    trained = settings.transform.mode
    if mode != trained:
        raise GenerateError(f"mode {mode!r} needs a network trained with transform.mode: {mode} "
                            f"({MODE_OVERLAYS[mode]}); this checkpoint was trained for {trained!r} "
                            f"(settings from {settings.source})")


def _prepare(image: str | Path | np.ndarray | ReferenceConditions, audio: str | Path | np.ndarray | None,
             settings: InferenceSettings, config: GenerateConfig, backend: KeypointBackend | None,
             driving: str | Path | tuple[np.ndarray, float] | None) -> _Inputs:
    """Audio, reference and driving keypoints, checked in that order (errors name the input)."""
    wave = _conditioning_audio(audio)
    if wave is None and config.mode != "video":
        raise GenerateError(f"{config.mode} mode needs audio")
    ref = _reference(image, backend, settings, config)
    video = None
    if config.mode != "audio":
        if driving is None:
            raise GenerateError("video and multimodal modes need a driving video (--driving-video)")
        video = DrivingVideo(driving)
    plan = _plan(settings, config, wave, video)
    seq = None
    if video is not None:
        seq = driving_keypoints(video, plan.fps, plan.driving_frames, backend, settings.transform, ref,
                                config.align_driving)
    clarity = resolve_clarity(config.hand_clarity, ref, getattr(settings, "conditions", {}).get("hand_clarity"))
    clip = generation_clip(ref, plan.segments * plan.seg, clarity, wave, seq)
    return _Inputs(ref, wave, clip, plan)


def pin_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Have glibc serve every host allocation of ``size`` bytes or more by ``mmap``, unmapped when freed.

    glibc starts at 128 KiB but raises its threshold to the size of each larger mmapped block
    that is freed (up to 32 MiB), and the first such frees happen while the network is built. From
    then on the buffers of every sampling step (MiBs each, allocated and freed by the thousand)
    are cut from the heap, which fragments: the heap's resident pages climbed segment after
    segment, so peak host memory grew with the video's length although what is in use does not.
    Setting the threshold once turns glibc's adjustment off for the process (a no-op elsewhere).

    Returns:
        Whether the threshold was set (False off glibc).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, size))


def _ticking(denoise: Callable[[Tensor, Tensor, bool, bool], Tensor],
             bar: tqdm) -> Callable[[Tensor, Tensor, bool, bool], Tensor]:
    """``denoise`` that advances the progress bar once per sampling step."""
    def ticking(x: Tensor, t: Tensor, use_ref: bool, use_audio: bool) -> Tensor:
        if use_ref and use_audio:
            bar.update(1)
        return denoise(x, t, use_ref, use_audio)

    return ticking


def _next_motion(motion: Tensor, latents: Tensor, num_motion: int) -> Tensor:
    """The last ``num_motion`` frames of what was generated so far (motion frames of the next segment)."""
    if latents.shape[1] >= num_motion:
        return latents[:, -num_motion:]
    return torch.cat([motion, latents], dim=1)[:, -num_motion:]


def _decode(model: CyberHost, latents: Tensor, n_keep: int, chunk: int, sink: Callable[[np.ndarray], None]) -> None:
    """Decode the first ``n_keep`` frames of ``latents (1, F, 4, h, w)`` ``chunk`` at a time into ``sink``."""
    for c in range(0, n_keep, chunk):
        sink(_to_uint8(model.decode_latents(latents[0, c : min(c + chunk, n_keep)])))


def _sample_segments(model: CyberHost, inputs: _Inputs, sampler: GuidedSampler, config: GenerateConfig,
                     sink: Callable[[np.ndarray], None], bar: tqdm,
                     on_latents: Callable[[Tensor], None] | None = None) -> None:
    """The segment loop: conditions from the contract, reference net once per segment, DDIM with CFG, chunked decode.

    The first segment's motion frames are the reference latent repeated, which training shows
    (``transform.p_motion_reference``); later segments take the last generated latents.
    ``on_latents`` receives each segment's latents ``(1, F, 4, h, w)`` before decoding.
    """
    plan, device = inputs.plan, next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    ref_latent = model.encode_images(to_unit(inputs.reference.conditions.reference[None].to(device)))  # (1, 4, h, w)
    latent_shape = ref_latent.shape[1:]
    motion = ref_latent[:, None].expand(1, plan.num_motion, *latent_shape)  # (1, M, 4, h, w)
    for s in range(plan.segments):
        lo = s * plan.seg
        bar.set_postfix(segment=f"{s + 1}/{plan.segments}")
        cond = segment_conditions(inputs.reference, inputs.clip, lo, plan.seg, plan.transform).batched().to(device)
        kwargs = network_inputs(model, cond, ref_latent, motion if plan.num_motion else None, dropout=False)
        batched = config.batch_cfg and (config.ref_scale, config.audio_scale) != (1.0, 1.0)  # 1, 1: one branch only
        denoise = guided_denoiser(model, kwargs, batched, audio=inputs.wave is not None, cuda_graph=config.cuda_graphs)
        latents = sampler.sample(_ticking(denoise, bar), (1, plan.seg, *latent_shape), device, generator)
        if plan.num_motion:
            motion = _next_motion(motion, latents, plan.num_motion)
        if on_latents is not None:
            on_latents(latents)
        _decode(model, latents, min(plan.seg, plan.total - lo), config.decode_chunk, sink)


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
    on_latents: Callable[[Tensor], None] | None = None,
) -> GenerationResult:
    """Generate a talking-body video from a reference image and audio with an in-memory model.

    Args:
        model: a stage-2 :class:`CyberHost` (any device; its mode is restored afterwards).
        image: reference image file, ``(H, W, 3)`` uint8 RGB array, or prepared conditions.
        audio: audio file (anything PyAV reads), mono float32 16 kHz samples, or None (video
            mode only: the driving video's length, no audio conditioning).
        output: mp4 to write (H.264 + the input audio as AAC: a file's own rate and channels);
            None = return the frames in memory.
        settings: what training used (clip length, fps, schedule, buckets); None = the
            model config with default transform/schedule/bucket settings.
        config: generation options.
        backend: keypoint backend; None = MediaPipe holistic (offline; built and closed here).
        driving: driving video file (streamed) or ``(frames, fps)`` for the video/multimodal modes.
        frames_dir: also save every frame as PNG here.
        progress: show a tqdm bar over segments x steps.
        on_latents: called with each segment's sampled latents ``(1, F, 4, h, w)`` (the probes'
            overfit test compares them with the training clip's latents).

    Returns:
        What was generated (frames in memory only when ``output`` is None).

    Raises:
        NoPersonError, AudioReadError, KeypointError, GenerateError: unusable inputs, naming them.
    """
    start = time.perf_counter()
    pin_mmap_threshold()  # host memory flat in the video's length
    config = config or GenerateConfig()
    settings = settings or InferenceSettings(model=model.config)
    if model.config.stage != 2:
        raise GenerateError("audio-driven generation needs a stage-2 network")
    check_mode(settings, config.mode)
    own_backend = backend is None and (config.mode != "audio" or not isinstance(image, ReferenceConditions))
    if own_backend:
        backend = MediaPipeHolistic(static_image_mode=True)  # only built when keypoints are needed
    try:
        inputs = _prepare(image, audio, settings, config, backend, driving)
    finally:
        if own_backend:
            backend.close()
    plan, size = inputs.plan, inputs.reference.size
    track = output_track(audio, plan.total / plan.fps) if output else None
    writer = VideoWriter(output, plan.fps, size, track, crf=config.crf, frames_dir=frames_dir) if output else None
    kept: list[np.ndarray] = []
    sampler = GuidedSampler(NoiseSchedule(settings.schedule).sampling_scheduler(),
                            SamplerConfig(config.steps, config.ref_scale, config.audio_scale, config.eta))
    was_training = model.training
    model.eval()
    speed_up(model, config)
    bar = tqdm(total=plan.segments * config.steps, desc="generate", unit="step", disable=not progress)
    try:
        with _autocast(next(model.parameters()).device, config.autocast), attention_backend(config.attention):
            _sample_segments(model, inputs, sampler, config, writer.write if writer else kept.append, bar, on_latents)
    finally:
        bar.close()
        model.state.clear()
        model.train(was_training)
        if writer is not None:
            writer.close()
    return GenerationResult(
        num_frames=plan.total, fps=plan.fps, segments=plan.segments, size=size, path=Path(output) if output else None,
        frames=np.concatenate(kept) if kept else None, seconds=time.perf_counter() - start,
    )  # fmt: skip
