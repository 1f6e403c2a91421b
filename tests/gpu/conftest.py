"""Synthetic shards for the GPU checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.synthetic import write_shards


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic clips of 24 frames in 2 shards."""
    return write_shards(tmp_path_factory.mktemp("gpu_shards"), num_clips=8, num_frames=24, size=(96, 80),
                        clips_per_shard=4)
