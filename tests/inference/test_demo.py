"""The demo's generate step, and memory that does not grow with the length of a generation."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import av
import pytest

from cyberhost.demo import SAMPLES, generate

ROOT = Path(__file__).resolve().parents[2]


def test_demo_generate_step(tmp_path: Path, tiny_ckpt, train_yaml: Path) -> None:
    sample = sorted(SAMPLES.glob("*.mp4"))[0]  # what the demo takes: a real person and speech
    video = tmp_path / "demo" / "generated.mp4"
    assert generate(sample, tiny_ckpt[0], train_yaml, video, frames=4, steps=1) == 0
    assert (tmp_path / "demo" / "reference.png").is_file()
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(container.streams.video[0])) == 4
        with av.open(str(sample)) as source:  # the sample's own audio track, re-encoded
            want = source.streams.audio[0].codec_context
            got = container.streams.audio[0].codec_context
            assert (got.sample_rate, got.channels) == (want.sample_rate, want.channels)


def _peak_rss(seconds: float, out: Path, size: int) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "tests.inference.long_generation", str(seconds), str(out), str(size)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=True)
    frames, peak = run.stdout.split()[-2:]
    return int(frames), int(peak)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_length(tmp_path: Path) -> None:
    size = 128  # 450 more frames of 128x128 are 22 MiB as uint8 (88 MiB as float): holding them would show
    short_frames, short = _peak_rss(2.0, tmp_path / "short.mp4", size)
    long_frames, long = _peak_rss(20.0, tmp_path / "long.mp4", size)
    assert (short_frames, long_frames) == (50, 500)
    assert long - short < 12, f"peak RSS {short} MiB for 2 s, {long} MiB for 20 s"


_GIVEN_BACK = """
import sys
from pathlib import Path

import numpy as np

from cyberhost.inference.pipeline import pin_mmap_threshold


def is_mapped(address):
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= address < hi:
            return True
    return False


big = np.ones(8 << 20, np.uint8)  # freeing a mapped 8 MiB block raises glibc's own threshold to 8 MiB
del big
if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
buffer = np.ones(1 << 20, np.uint8)
address = buffer.ctypes.data
assert is_mapped(address)  # the check sees the buffer's pages
del buffer
print(not is_mapped(address))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
@pytest.mark.parametrize("pin", [True, False])
def test_large_host_buffers_are_given_back_after_the_pin(pin: bool) -> None:
    # what keeps the slow test flat: a freed 1 MiB buffer leaves the process (it had a mapping of its own)
    # instead of staying in the heap for the next allocations to fragment. glibc maps only when the heap
    # must grow, so this runs in a fresh process, whose heap has no free 1 MiB block yet
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _GIVEN_BACK, "pin" if pin else "no-pin"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    assert run.stdout.split()[-1] == str(pin)
