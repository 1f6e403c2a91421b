"""Peak RSS of one generation to an mp4: ``python -m tests.inference.long_generation SECONDS OUT.mp4 SIZE``.

Run in a fresh process per length by ``test_demo.py``; prints ``frames peak_rss_mib``. A short
generation to a file runs first, so one-off allocations (encoder, kernels) are in every run's peak.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from benchmarks.synthetic import make_clip
from cyberhost.inference import GenerateConfig, generate_video

from .conftest import FixedBackend, build_model, settings_for, write_wav


def main(seconds: float, out: Path, size: int) -> None:
    """Generate ``seconds`` of video at ``size`` x ``size`` with a tiny network and report the peak RSS."""
    clip = make_clip("ref-0000", num_frames=1, size=(192, 160), seed=0)  # a drawn figure and its keypoints
    model = build_model()
    config = GenerateConfig(steps=1, height=size, width=size)
    for length, path in ((0.2, out.with_suffix(".warmup.mp4")), (seconds, out)):
        wav = write_wav(path.with_suffix(".wav"), length)
        result = generate_video(model, clip["frames"][0], wav, path, settings=settings_for(model), config=config,
                                backend=FixedBackend(clip["keypoints"][0]), progress=False)
    print(result.num_frames, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


if __name__ == "__main__":
    main(float(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
