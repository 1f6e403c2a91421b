"""Make the committed sample videos of ``data_prep/samples/`` (``make samples``).

Each sample is a public-domain photo of a real person moved by a smooth, camera-like pan and zoom,
with public-domain read speech: H.264 + AAC mp4, 25 fps. Sources (see ``samples/PROVENANCE.md``):

* ``skimage.data.astronaut()`` - NASA portrait of Eileen Collins (public domain);
* matplotlib's ``sample_data/grace_hopper.jpg`` - US Navy portrait of Grace Hopper (public domain);
* ``skimage.data.camera()`` - "cameraman" (CC0 per scikit-image);
* LibriVox recordings of *Sense and Sensibility* ch. 1 (public domain) as shipped in Debian's
  ``pocketsphinx-testdata`` package (``apt-get install pocketsphinx-testdata``).

Usage: ``python -m data_prep.make_samples --output data_prep/samples``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cyberhost.media.audio import AudioTrack, read_audio
from cyberhost.media.writer import VideoWriter

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
FPS = 25


@dataclass(frozen=True)
class Sample:
    """One sample video.

    Attributes:
        name: output file stem.
        image: ``astronaut``, ``grace_hopper`` or ``camera``.
        speech: LibriVox wav name under :data:`LIBRIVOX`.
        seconds: duration.
        size: output ``(width, height)``.
        audio_rate: AAC sample rate (differs per sample so resampling to 16 kHz gets exercised).
        stereo: write two audio channels (exercises the downmix).
    """

    name: str
    image: str
    speech: str
    seconds: float
    size: tuple[int, int]
    audio_rate: int
    stereo: bool


SAMPLES = (
    Sample("astronaut", "astronaut", "sense_and_sensibility_01_austen_64kb-0870.wav", 6.0, (384, 384), 44_100, True),
    Sample("grace_hopper", "grace_hopper", "sense_and_sensibility_01_austen_64kb-0920.wav", 6.0, (320, 384), 48_000, False),
    Sample("cameraman", "camera", "sense_and_sensibility_01_austen_64kb-0890.wav", 5.0, (384, 384), 16_000, False),
)


def load_image(name: str) -> np.ndarray:
    """RGB uint8 image of a public-domain source by name."""
    from skimage import data

    if name == "astronaut":
        return data.astronaut()
    if name == "camera":
        return cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2RGB)
    if name == "grace_hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    raise ValueError(f"unknown image {name!r}")


def camera_path(image: np.ndarray, size: tuple[int, int], frames: int, seed: int) -> np.ndarray:
    """Frames of a smooth pan/zoom over an image (sums of slow sines: no jumps, no loops).

    Args:
        image: source RGB image.
        size: output ``(width, height)``.
        frames: number of frames.
        seed: phase seed, so each sample moves differently.

    Returns:
        ``(frames, height, width, 3)`` uint8.
    """
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi, 3)
    h, w = image.shape[:2]
    out_w, out_h = size
    base = max(out_w / w, out_h / h) * 1.08  # a little larger than the frame, so panning has room
    video = np.empty((frames, out_h, out_w, 3), np.uint8)
    for i in range(frames):
        t = i / FPS
        zoom = base * (1.0 + 0.06 * math.sin(2 * math.pi * t / 5.0 + phase[0]))
        cx = w / 2 + 0.03 * w * math.sin(2 * math.pi * t / 4.0 + phase[1])
        cy = h / 2 + 0.02 * h * math.sin(2 * math.pi * t / 3.3 + phase[2])
        m = np.array([[zoom, 0, out_w / 2 - zoom * cx], [0, zoom, out_h / 2 - zoom * cy]], np.float64)
        video[i] = cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return video


def load_speech(name: str, seconds: float) -> np.ndarray:
    """The first ``seconds`` of a LibriVox wav as float32 mono at its own rate (16 kHz).

    Raises:
        FileNotFoundError: with the install command when the Debian package is missing.
    """
    path = LIBRIVOX / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install it with 'apt-get install -y pocketsphinx-testdata'")
    rate = 16_000
    pcm = read_audio(path, rate)[: round(seconds * rate)]
    return np.pad(pcm, (0, max(0, round(seconds * rate) - len(pcm))))


def write_video(path: Path, video: np.ndarray, speech: np.ndarray, sample: Sample) -> None:
    """Encode frames (H.264, yuv420p) and speech (AAC at the sample's rate and channels) into an mp4."""
    track = AudioTrack.mono(speech, 16_000).resampled(sample.audio_rate, "stereo" if sample.stereo else "mono")
    with VideoWriter(path, FPS, video.shape[1:3], track, crf=24, options={"preset": "slow", "threads": "1"},
                     audio_bit_rate=48_000) as writer:
        writer.write(video)


def main(argv: list[str] | None = None) -> None:
    """Write every sample into ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "samples")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for seed, sample in enumerate(SAMPLES):
        frames = round(sample.seconds * FPS)
        video = camera_path(load_image(sample.image), sample.size, frames, seed)
        path = args.output / f"{sample.name}.mp4"
        write_video(path, video, load_speech(sample.speech, sample.seconds), sample)
        print(f"{path}: {frames} frames {sample.size[0]}x{sample.size[1]}, {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
