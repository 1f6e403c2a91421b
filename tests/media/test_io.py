"""PyAV reading and the one writer: round trips, error messages, audio timing, in-memory segments."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from cyberhost.media import (
    AudioFileTrack,
    AudioTrack,
    VideoWriter,
    decode_video_bytes,
    encode_video_bytes,
    read_audio,
    read_audio_track,
    read_video,
    write_video,
)
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


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_audio_starts_with_the_first_frame(tmp_path, rate) -> None:
    # a click at 0.5 s must decode at 0.5 s: the AAC encoder's priming samples are cut by the edit list
    # (without the writer's time stamps they stay in the track: 1024 samples late)
    click = np.zeros(rate, np.float32)
    click[rate // 2 : rate // 2 + 40] = 0.8
    track = AudioTrack.mono(click, rate)
    with VideoWriter(tmp_path / "c.mp4", 25, (16, 16), track) as writer:
        writer.write(moving_frames(25, 16, 16, 0))
    heard = read_audio(tmp_path / "c.mp4", sr=16_000)
    onset = int(np.flatnonzero(np.abs(heard) > 0.2)[0])
    assert abs(onset - 8_000) <= 16  # 1 ms at 16 kHz (1024 priming samples would be 372-1024 here)


def test_streamed_track_equals_the_whole_track(tmp_path) -> None:
    rng = np.random.default_rng(0)
    stereo = AudioTrack((0.1 * rng.standard_normal((2, 44_100 * 2))).astype(np.float32), 44_100, "stereo")
    with VideoWriter(tmp_path / "s.mp4", 25, (16, 16), stereo) as writer:
        writer.write(moving_frames(50, 16, 16, 0))
    whole = read_audio_track(tmp_path / "s.mp4", max_seconds=1.3)
    streamed = AudioFileTrack(tmp_path / "s.mp4", max_seconds=1.3)
    chunks = list(streamed.chunks())
    assert len(chunks) > 10 and (streamed.sample_rate, streamed.layout) == (44_100, "stereo")
    assert whole.samples.shape == (2, round(1.3 * 44_100))
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole.samples)
    # writing from the file streams it and gives the same file as writing the track held in memory
    for name, source in (("held.mp4", whole), ("streamed.mp4", streamed)):
        with VideoWriter(tmp_path / name, 25, (16, 16), source) as writer:
            writer.write(moving_frames(30, 16, 16, 1))
    assert (tmp_path / "held.mp4").read_bytes() == (tmp_path / "streamed.mp4").read_bytes()


def test_in_memory_segment_and_file_object() -> None:
    frames = moving_frames(12, 33, 47, seed=2)  # odd sides are cut to even
    data = encode_video_bytes(frames, 25.0, crf=0, options={"g": "4"})
    got = decode_video_bytes(data, [7, 2, 2])
    assert got.shape == (3, 32, 46, 3)
    assert np.abs(got.astype(int) - frames[[7, 2, 2], :32, :46]).mean() < 3
    buf = io.BytesIO()
    with VideoWriter(buf, 25.0, (32, 46), crf=0, options={"g": "4"}, container_format="mp4") as writer:
        writer.write(frames[:, :32, :46])
    assert buf.getvalue() == data
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
