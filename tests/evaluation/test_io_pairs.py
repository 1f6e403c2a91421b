"""PyAV reading/writing and pair discovery, including the error messages."""

from __future__ import annotations

import numpy as np
import pytest

from cyberhost.evaluation.io import read_audio, read_video, write_video
from cyberhost.evaluation.pairs import discover_pairs, read_pairs_csv
from tests.evaluation.helpers import moving_frames


def test_video_and_audio_round_trip(tmp_path) -> None:
    frames = moving_frames(10, 48, 64, seed=0)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)).astype(np.float32)
    write_video(tmp_path / "a.mp4", frames, 25, tone, crf=0)
    got, fps = read_video(tmp_path / "a.mp4")
    assert got.shape == frames.shape and got.dtype == np.uint8 and fps == 25.0
    assert np.abs(got.astype(int) - frames).mean() < 3  # smooth content, near-lossless
    audio = read_audio(tmp_path / "a.mp4")
    assert audio.dtype == np.float32 and abs(len(audio) - 16_000) <= 1024  # AAC pads a frame
    assert np.abs(audio).max() == pytest.approx(0.3, abs=0.05)
    assert len(read_audio(tmp_path / "a.mp4", sr=8000)) == pytest.approx(len(audio) / 2, abs=64)
    assert len(read_video(tmp_path / "a.mp4", max_frames=4)[0]) == 4


def test_io_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    write_video(tmp_path / "silent.mp4", moving_frames(3, 16, 16, 0), 25)
    with pytest.raises(ValueError, match="no audio stream"):
        read_audio(tmp_path / "silent.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open"):
        read_video(tmp_path / "junk.mp4")
    with pytest.raises(ValueError, match="even frame size"):
        write_video(tmp_path / "odd.mp4", moving_frames(2, 15, 16, 0), 25)


def _touch(folder, *names) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_discover_pairs_by_stem(tmp_path) -> None:
    _touch(tmp_path / "gen", "a.mp4", "b.mp4", "notes.txt")
    _touch(tmp_path / "gt", "a.mov", "b.mp4", "c.mp4")
    _touch(tmp_path / "ref", "a.png")
    pairs = discover_pairs(tmp_path / "gen", tmp_path / "gt", tmp_path / "ref")
    assert [(p.name, p.ground_truth.name, p.reference_image and p.reference_image.name) for p in pairs] == [
        ("a", "a.mov", "a.png"),
        ("b", "b.mp4", None),
    ]
    _touch(tmp_path / "gt2", "a.mp4")
    with pytest.raises(FileNotFoundError, match="no file for: b"):
        discover_pairs(tmp_path / "gen", tmp_path / "gt2")
    with pytest.raises(FileNotFoundError, match="generated videos not found"):
        discover_pairs(tmp_path / "nope", tmp_path / "gt")
    with pytest.raises(ValueError, match="as files or both as directories"):
        discover_pairs(tmp_path / "gen", tmp_path / "gt" / "a.mov")


def test_pairs_csv(tmp_path) -> None:
    _touch(tmp_path / "v", "g1.mp4", "t1.mp4", "g2.mp4")
    (tmp_path / "pairs.csv").write_text("generated,ground_truth,name\nv/g1.mp4,v/t1.mp4,first\nv/g2.mp4,,\n")
    pairs = read_pairs_csv(tmp_path / "pairs.csv")
    assert [(p.name, p.ground_truth) for p in pairs] == [("first", tmp_path / "v" / "t1.mp4"), ("g2", None)]
    (tmp_path / "bad.csv").write_text("generated,ground_truth\nv/g1.mp4,v/missing.mp4\n")
    with pytest.raises(FileNotFoundError, match=r"bad.csv:2: ground_truth file not found"):
        read_pairs_csv(tmp_path / "bad.csv")
    (tmp_path / "nohead.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="'generated' column"):
        read_pairs_csv(tmp_path / "nohead.csv")
