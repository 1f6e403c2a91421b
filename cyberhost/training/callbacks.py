"""Training callbacks: throughput/memory, validation samples (rank 0), safetensors export.

Sampling and visualisation live here, never in ``training_step`` (STYLE.md #5).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from cyberhost.diffusion import GuidedSampler, SamplerConfig
from cyberhost.media import even_crop, write_video
from cyberhost.models.conditioning import guided_denoiser
from cyberhost.training.checkpoints import export_safetensors


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run's logs (the logger's version folder), else the trainer's root."""
    logger = trainer.logger
    return Path(logger.log_dir if logger is not None and logger.log_dir else trainer.default_root_dir)


class ThroughputMonitor(L.Callback):
    """Logs samples/s, frames/s, the fraction of step time spent waiting for data, and GPU memory.

    Rates are averaged over the ``log_every_n_steps`` steps since the last log. The GPU is
    synchronised only on logging steps (a per-step ``synchronize`` would stall the CPU's queue of
    kernels), so the window's wall time is exact; the data-wait share is the host time spent
    between a step's end and the next batch's arrival.

    Args:
        log_every_n_steps: logging interval in optimizer steps.
    """

    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.every = max(1, log_every_n_steps)
        self._window: float | None = None
        self._end: float | None = None
        self._wait = 0.0
        self._samples = self._frames = self._steps = 0
        self._logged_step = -1
        self._val_start = 0.0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self._wait += now - self._end

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        b, f = batch["target"].shape[:2]
        if self._window is None:  # the first step (start-up, compilation) is not measured
            self._sync(pl_module)
            self._window = self._end = time.perf_counter()
            return
        self._samples, self._frames, self._steps = self._samples + b, self._frames + b * f, self._steps + 1
        if trainer.global_step % self.every == 0 and trainer.global_step != self._logged_step:
            self._logged_step = trainer.global_step
            self._sync(pl_module)
            now = time.perf_counter()
            total = max(now - self._window, 1e-9)
            logs = {
                "perf/samples_per_s": self._samples / total, "perf/frames_per_s": self._frames / total,
                "perf/data_wait_fraction": min(1.0, self._wait / total), "perf/step_s": total / self._steps,
            }  # fmt: skip
            if pl_module.device.type == "cuda":
                logs["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            pl_module.log_dict(logs, rank_zero_only=True)
            self._wait, self._samples, self._frames, self._steps = 0.0, 0, 0, 0
            self._window = time.perf_counter()
        self._end = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Leave validation out of the window (and out of the data wait)."""
        spent = time.perf_counter() - self._val_start
        if self._window is not None:
            self._window += spent
        if self._end is not None:
            self._end += spent


def _grid(rows: list[Tensor]) -> np.ndarray:
    """Frames ``(F, 3, H, W)`` per column -> ``(F, H, W*cols, 3)`` uint8 video."""
    frames = max(r.shape[0] for r in rows)
    cols = [r.expand(frames, -1, -1, -1) if r.shape[0] == 1 else r for r in rows]
    video = torch.cat(cols, dim=-1)  # (F, 3, H, sum W)
    return video.permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8).cpu().numpy()


class ValidationSamples(L.Callback):
    """At validation (every ``every_n_steps``; 0 = every validation): sample the first validation batch and log
    reference | generated | ground truth.

    The grid goes to TensorBoard (``val/samples``: the first frame; ``val/samples_video``: all
    frames as an animated GIF, shown in the Images tab) and to ``<run dir>/samples/step_<N>.mp4``. Under DDP only rank 0 samples; sharded strategies
    (FSDP) need every rank in the forward, so all sample and rank 0 writes.

    Args:
        every_n_steps: sampling interval in optimizer steps, checked at validation time (0 = every validation).
        max_samples: how many clips of the batch to show.
        steps: sampler steps (overrides the module's sampler config when > 0).
        fps: frame rate of the mp4 files.
    """

    def __init__(self, every_n_steps: int = 0, max_samples: int = 2, steps: int = 0, fps: float = 25.0) -> None:
        self.every, self.max_samples, self.steps, self.fps = every_n_steps, max_samples, steps, fps
        self._last = -1

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        step = trainer.global_step
        due = self.every <= 0 or step % self.every == 0
        if batch_idx != 0 or trainer.sanity_checking or step == self._last or not due:
            return
        sharded = "ModelParallel" in type(trainer.strategy).__name__ or "FSDP" in type(trainer.strategy).__name__
        if not (trainer.is_global_zero or sharded):
            return
        self._last = step
        video = self.sample(pl_module, {k: v[: self.max_samples] for k, v in batch.items()})
        if trainer.is_global_zero:
            self._write(trainer, video, step)

    @torch.no_grad()
    def sample(self, module: Any, batch: dict[str, Tensor]) -> np.ndarray:
        """Reference | generated | ground truth for each clip, stacked vertically: ``(F, H*, W*, 3)``."""
        cfg = module.sampler_config
        if self.steps > 0:
            cfg = SamplerConfig(self.steps, cfg.ref_scale, cfg.audio_scale, cfg.eta)
        latents = module.encode(batch)
        # the contract's one path with dropout off: every branch sets its own flags, as in generate
        denoise = guided_denoiser(module.model, module.conditions(batch, latents, dropout=False), batched=False)
        sampler = GuidedSampler(module.schedule.sampling_scheduler(), cfg)
        gen = torch.Generator().manual_seed(module.seed)
        x = sampler.sample(denoise, tuple(latents["target"].shape), latents["target"].device, gen)
        b, f = x.shape[:2]
        images = module.model.decode_latents(x.flatten(0, 1)).unflatten(0, (b, f))  # (B, F, 3, H, W)
        out = []
        for i in range(b):
            gen_i = ((images[i].float() + 1) * 127.5).round()
            out.append(_grid([batch["reference"][i][None].float(), gen_i, batch["target"][i].float()]))
        return np.concatenate(out, axis=1)

    def _write(self, trainer: L.Trainer, video: np.ndarray, step: int) -> None:
        path = run_dir(trainer) / "samples" / f"step_{step:07d}.mp4"
        write_video(path, even_crop(video), self.fps, crf=None)  # x264's default quality
        exp = getattr(trainer.logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_image"):
            exp.add_image("val/samples", video[0], step, dataformats="HWC")
            if video.shape[0] > 1 and hasattr(exp, "_get_file_writer"):
                exp._get_file_writer().add_summary(gif_summary("val/samples_video", video, self.fps), step)


def encode_gif(video: np.ndarray, fps: float) -> bytes:
    """``(F, H, W, 3)`` uint8 -> an endlessly looping animated GIF (Pillow)."""
    from PIL import Image

    frames = [Image.fromarray(np.ascontiguousarray(f)) for f in video]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def gif_summary(tag: str, video: np.ndarray, fps: float) -> Any:
    """A TensorBoard image summary holding an animated GIF: what ``SummaryWriter.add_video`` writes,
    without its moviepy dependency. TensorBoard's Images tab plays it."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=video.shape[1], width=video.shape[2], colorspace=3,
                          encoded_image_string=encode_gif(video, fps))
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class SafetensorsExport(L.Callback):
    """Export the trained network as safetensors with the run settings (:func:`cyberhost.weights.export_safetensors`).

    Everything but the frozen pretrained parts (VAE, wav2vec2, ArcFace, which come from their
    own weight paths) is written, so the file alone hands stage 1 to stage 2 and serves generation.
    With EMA enabled the raw weights keep their names and the EMA copies are stored beside them as
    ``ema.<name>``; readers use the EMA copies unless asked for raw weights (``generate --no-ema``).
    The metadata holds the config tree (``config_tree()``) and the conditions record
    (``condition_record()``), so generation needs no YAML.

    Writes ``<run dir>/export/step_<N>.safetensors`` every ``every_n_steps`` (0: only at the end)
    and ``<run dir>/export/last.safetensors`` when training ends. ``all_weights`` also stores the
    frozen parts (bigger files, but self-contained).

    Args:
        every_n_steps: export interval in optimizer steps (0 = at the end only).
        all_weights: include the frozen pretrained parts too (self-contained, bigger files).
    """

    def __init__(self, every_n_steps: int = 0, all_weights: bool = False) -> None:
        self.every, self.all_weights = every_n_steps, all_weights

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every and trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self.export(trainer, pl_module, f"step_{trainer.global_step:07d}.safetensors")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module, "last.safetensors")

    def export(self, trainer: L.Trainer, module: Any, name: str) -> Path | None:
        """Gather the weights (full state dict under FSDP2) and write them on rank 0."""
        state = _full_state(module.model)
        if not trainer.is_global_zero:
            return None
        frozen = {f"{prefix}.{k}" for prefix, part in _frozen_parts(module.model) for k in part.state_dict()}
        out = {k: v for k, v in state.items() if self.all_weights or k not in frozen}
        ema = {k: v for k, v in (module.ema or {}).items() if k in out}
        return export_safetensors(out, run_dir(trainer) / "export" / name, module.config_tree(),
                                  module.condition_record(), ema)


def _frozen_parts(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    parts = {id(m) for m in model.frozen_modules()}
    return [(n, m) for n, m in model.named_modules() if id(m) in parts]


def _full_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """Unsharded state dict (collective under FSDP2: every rank must call it)."""
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()
