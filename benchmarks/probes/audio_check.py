"""Why the audio probe fails: is it the audio path, or the random wav2vec2's features? (PROBES.md, "Audio")

The probes' default audio features are now a stand-in (:mod:`benchmarks.probes.audio_encoder`);
these diagnostics are about the product's wav2vec2 with random weights (``Settings.audio =
"wav2vec2"``), which the stand-in replaced.

``python -m benchmarks.probes.audio_check readout [--audio bands]`` measures how much of each probe frame's sound
class (:func:`benchmarks.probes.clips.frame_sounds`) the frozen random-init tiny wav2vec2's
features keep at the video frame times (``AudioEncoder.features``, the targets' audio as training
cuts it): a ridge read-out's held-out R^2 and a nearest-class-mean accuracy (chance 1/3).

``python -m benchmarks.probes.audio_check oracle --out DIR`` trains the stage-2 probe network
(one seed, the tiny preset) with ``AudioEncoder.features`` replaced by an *oracle*: per frame, the
waveform's RMS and its energy at the two probe tones, tiled to the features' shape. Everything
after the features is the product's (frame windows, projection MLP, audio attention, dropout), so a
gap here shows that path learns and that the plain probe's failure lies in the features.

``python -m benchmarks.probes.audio_check tones --tones 100 800 6000 --out DIR`` trains the same
network with the plain wav2vec2 features on clips whose three sounds are these tones (instead of
:data:`benchmarks.probes.clips.SOUND_TONES`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.probes import clips
from benchmarks.probes import run as probes
from benchmarks.probes.audio_encoder import tile_to_features
from cyberhost.data.schema import AUDIO_SAMPLE_RATE
from cyberhost.models.audio import AudioEncoder


def readout(clips_n: int = 200, seed: int = 0, audio: str = "wav2vec2") -> dict[str, float]:
    """Held-out R^2 and nearest-mean accuracy of the sound class from the frozen features (``Settings.audio``)."""
    torch.manual_seed(seed)
    module = probes.build_module(2, dataclasses.replace(probes.PRESETS["tiny"], audio=audio), seed, "cpu")
    enc = module.model.audio
    n = clips.MOTION + clips.TARGETS
    feats, labels = [], []
    for i in range(clips_n):
        rng = np.random.default_rng(1000 + i)
        levels = rng.integers(0, len(clips.SOUND_TONES), n)
        wave = torch.from_numpy(clips.frame_sounds(levels, rng))[None]
        per = wave.shape[1] // n
        feats.append(enc.features(wave[:, clips.MOTION * per :], clips.TARGETS)[0].flatten(1).numpy())
        labels.append(levels[clips.MOTION :])
    x, y = np.concatenate(feats), np.concatenate(labels)
    cut = int(0.75 * len(x))
    a = np.c_[x, np.ones(len(x))]
    w = np.linalg.solve(a[:cut].T @ a[:cut] + 1e-3 * np.eye(a.shape[1]), a[:cut].T @ y[:cut].astype(float))
    pred = a[cut:] @ w
    r2 = 1 - float(((pred - y[cut:]) ** 2).mean() / y[cut:].var())
    means = np.stack([x[:cut][y[:cut] == c].mean(0) for c in range(len(clips.SOUND_TONES))])
    acc = float((np.argmin(((x[cut:, None] - means) ** 2).sum(-1), 1) == y[cut:]).mean())
    return {"r2": r2, "nearest_mean_accuracy": acc, "frames": int(len(x))}


@torch.no_grad()
def oracle_features(self: AudioEncoder, waveform: Tensor, num_frames: int) -> Tensor:
    """Per frame: RMS and the energy at each probe tone, tiled to ``(B, F, L, D)``."""
    b, n = waveform.shape
    per = n // num_frames
    x = waveform[:, : per * num_frames].float().view(b, num_frames, per)
    t = torch.arange(per, device=x.device) / AUDIO_SAMPLE_RATE
    parts = [5 * x.pow(2).mean(-1).sqrt()]
    for tone in clips.SOUND_TONES[1:]:
        c, s = torch.cos(2 * np.pi * tone * t), torch.sin(2 * np.pi * tone * t)
        parts.append(10 * ((x * c).mean(-1).pow(2) + (x * s).mean(-1).pow(2)).sqrt())
    return tile_to_features(self, torch.stack(parts, -1))  # (B, F, 3) -> (B, F, L, D)


def stage2_probe(out: Path, steps: int, seeds: int = 1, tones: tuple[float | None, ...] | None = None,
                 use_oracle: bool = False) -> dict:
    """The stage-2 probe network (tiny, in this process) with the :func:`oracle_features` and/or other sounds."""
    original, sounds = AudioEncoder.features, clips.SOUND_TONES
    if use_oracle:
        AudioEncoder.features = oracle_features
    if tones:
        clips.SOUND_TONES = tuple(tones)
    try:
        s = probes.PRESETS["tiny"]
        s = dataclasses.replace(s, steps=(s.steps[0], steps, s.steps[2]), audio="wav2vec2")
        return probes.run("cpu", "tiny", seeds, out, ("stage2",), False, s, jobs=1)
    finally:
        AudioEncoder.features, clips.SOUND_TONES = original, sounds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["readout", "oracle", "tones"])
    p.add_argument("--tones", type=float, nargs=3, default=[100.0, 800.0, 6000.0], help="Hz of the three sounds (tones)")
    p.add_argument("--out", type=Path, default=Path("runs/probe-audio-oracle"))
    p.add_argument("--steps", type=int, default=probes.PRESETS["tiny"].steps[1])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--audio", choices=probes.AUDIO_FEATURES, default="wav2vec2", help="readout: whose features")
    args = p.parse_args(argv)
    if args.what == "readout":
        print(readout(audio=args.audio))
        return
    oracle = args.what == "oracle"
    report = stage2_probe(args.out, args.steps, args.seeds, None if oracle else tuple(args.tones), oracle)
    for row in report["table"]:
        if row["condition"].startswith("audio"):
            print(row["condition"], f"{100 * row['rel_gap']:+.2f} %", row["verdict"], row.get("per_seed"))


if __name__ == "__main__":
    main()
