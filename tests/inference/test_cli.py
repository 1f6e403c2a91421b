"""End-to-end ``cyberhost generate`` through the real CLI, in-process, on a tiny checkpoint."""

from __future__ import annotations

import math
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cyberhost.inference.cli import main
from cyberhost.inference.errors import GenerateError

from .conftest import write_wav


def _streams(path: Path) -> dict[str, int]:
    with av.open(str(path)) as container:
        counts = {s.type: 0 for s in container.streams}
        video = container.streams.video[0]
        counts["video"] = sum(1 for _ in container.decode(video))
        counts["audio_codec"] = container.streams.audio[0].codec_context.name if container.streams.audio else ""
        counts["size"] = (video.codec_context.height, video.codec_context.width)
    return counts


def test_ckpt_to_mp4_with_audio_and_frames(tmp_path: Path, photo_file: Path, tiny_ckpt) -> None:
    ckpt, _ = tiny_ckpt
    audio = write_wav(tmp_path / "speech.wav", 0.61)
    out = tmp_path / "out" / "video.mp4"
    rc = main(["--image", str(photo_file), "--audio", str(audio), "--checkpoint", str(ckpt), "--output", str(out),
               "--frames-dir", str(tmp_path / "frames"), "--steps", "2", "--no-progress", "--device", "cpu"])
    assert rc == 0
    info = _streams(out)
    frames = math.ceil(0.61 * 25)  # 16: two segments of 12, the second cut
    assert info["video"] == frames
    assert "audio" in info and info["audio_codec"] == "aac"
    assert info["size"] == (64, 64)
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == frames


def test_split_safetensors_exports_with_training_yaml(tmp_path: Path, photo_file: Path, tiny_ckpt,
                                                      train_yaml: Path) -> None:
    _, model = tiny_ckpt
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    first = {k: v for k, v in state.items() if k.startswith(("reference_net.", "vae."))}  # e.g. a stage-1 export
    save_file(first, str(tmp_path / "stage1.safetensors"))
    save_file({k: v for k, v in state.items() if k not in first}, str(tmp_path / "stage2.safetensors"))
    audio = write_wav(tmp_path / "a.wav", 1.0)
    out = tmp_path / "st.mp4"
    rc = main(["--image", str(photo_file), "--audio", str(audio), "--checkpoint", str(tmp_path / "stage1.safetensors"),
               "--checkpoint", str(tmp_path / "stage2.safetensors"), "--config", str(train_yaml), "--output", str(out),
               "--steps", "1", "--max-frames", "5", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert _streams(out)["video"] == 5
    with av.open(str(out)) as container:
        assert float(container.streams.audio[0].duration * container.streams.audio[0].time_base) < 0.3  # cut too


def test_no_person_names_the_image(tmp_path: Path, tiny_ckpt, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    blank = tmp_path / "empty_wall.png"
    cv2.imwrite(str(blank), np.full((128, 96, 3), 200, np.uint8))
    audio = write_wav(tmp_path / "a.wav", 0.2)
    rc = main(["--image", str(blank), "--audio", str(audio), "--checkpoint", str(tiny_ckpt[0]),
               "--output", str(tmp_path / "x.mp4"), "--no-progress", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no person found" in err and "empty_wall.png" in err
    assert not (tmp_path / "x.mp4").exists()


def test_unreadable_audio_names_file_and_reason(tmp_path: Path, photo_file: Path, tiny_ckpt,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "voice.wav"
    bad.write_text("this is not audio")
    rc = main(["--image", str(photo_file), "--audio", str(bad), "--checkpoint", str(tiny_ckpt[0]),
               "--output", str(tmp_path / "x.mp4"), "--no-progress", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot read audio from" in err and "voice.wav" in err and "media file" in err
    missing = tmp_path / "nowhere.mp3"
    rc = main(["--image", str(photo_file), "--audio", str(missing), "--checkpoint", str(tiny_ckpt[0]),
               "--output", str(tmp_path / "x.mp4"), "--no-progress", "--device", "cpu"])
    assert rc == 2 and "nowhere.mp3" in capsys.readouterr().err


def _stereo_wav(path: Path, seconds: float, sr: int = 44_100) -> Path:
    """Left 440 Hz, right 660 Hz, 16-bit."""
    t = np.arange(round(seconds * sr)) / sr
    pcm = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], 1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(sr)
        out.writeframes((pcm * 32767).astype("<i2").tobytes())
    return path


def test_mp4_carries_the_input_audio_not_the_16k_mono_copy(tmp_path: Path, photo_file: Path, tiny_ckpt) -> None:
    audio = _stereo_wav(tmp_path / "stereo.wav", 1.0)
    out = tmp_path / "stereo.mp4"
    rc = main(["--image", str(photo_file), "--audio", str(audio), "--checkpoint", str(tiny_ckpt[0]),
               "--output", str(out), "--steps", "1", "--max-frames", "10", "--no-progress", "--device", "cpu"])
    assert rc == 0
    with av.open(str(out)) as container:
        video, track = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert track.codec_context.name == "aac"
        assert track.codec_context.sample_rate == 44_100 and track.codec_context.channels == 2
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(track)], axis=1)  # (2, S) planar
    assert decoded.shape[0] == 2
    assert abs(decoded.shape[1] / 44_100 - 10 / 25) < 0.05  # cut to the 10 frames (AAC pads < 1024 samples)
    for channel, freq in ((0, 440), (1, 660)):  # the channels are the input's, not an upmixed mono
        spectrum = np.abs(np.fft.rfft(decoded[channel, 2048:16384]))
        peak = np.fft.rfftfreq(16384 - 2048, 1 / 44_100)[spectrum.argmax()]
        assert abs(peak - freq) < 10


def test_rtmlib_errors_are_one_line(tmp_path: Path, photo_file: Path, tiny_ckpt,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    audio = write_wav(tmp_path / "a.wav", 0.2)
    base = ["--image", str(photo_file), "--audio", str(audio), "--checkpoint", str(tiny_ckpt[0]),
            "--output", str(tmp_path / "x.mp4"), "--no-progress", "--device", "cpu", "--keypoints", "rtmlib"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rtmlib-det" in err and "--rtmlib-pose" in err
    bogus = tmp_path / "det.onnx"
    bogus.write_bytes(b"not an onnx model")
    assert main([*base, "--rtmlib-det", str(bogus), "--rtmlib-pose", str(tmp_path / "missing_pose.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rtmlib-pose" in err and "missing_pose.onnx: no such file" in err
    assert main([*base, "--rtmlib-det", str(bogus), "--rtmlib-pose", str(bogus)]) == 2  # onnxruntime refuses it
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot build the rtmlib keypoint backend" in err and "det.onnx" in err
    assert not (tmp_path / "x.mp4").exists()


def test_backend_failure_on_a_frame_is_named(photo, tiny_ckpt) -> None:
    from cyberhost.inference import KeypointError, generate_video

    class Broken:
        name = "broken"

        def __call__(self, frame: np.ndarray) -> np.ndarray:
            raise RuntimeError("onnxruntime: bad input")

        def reset(self) -> None: ...

    with pytest.raises(KeypointError, match=r"keypoint backend 'broken' failed on the reference image <array>: "
                                            r"RuntimeError: onnxruntime: bad input"):
        generate_video(tiny_ckpt[1], photo, np.zeros(1600, np.float32), None, backend=Broken(), progress=False)


def test_python_dash_m_cyberhost(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    monkeypatch.setattr(sys, "argv", ["cyberhost", "evaluate"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("cyberhost", run_name="__main__")
    assert exit_info.value.code == 2 and "nothing to evaluate" in capsys.readouterr().err


def test_hand_clarity_from_training_data(tmp_path: Path) -> None:
    from benchmarks.synthetic import make_clip, write_shards
    from cyberhost.inference.cli import build_parser, generate_config

    write_shards(tmp_path / "clips", num_clips=3, num_frames=6, clips_per_shard=2)
    measured = np.concatenate([make_clip(f"syn{i:04d}-0000", 6, seed=i)["hand_clarity"].ravel() for i in range(3)])
    expected = np.percentile(measured[np.isfinite(measured)], 80)
    args = build_parser().parse_args(["--image", "x", "--checkpoint", "y", "--output", "z", "--hand-clarity-data",
                                      str(tmp_path / "clips"), "--hand-clarity-percentile", "80"])
    config = generate_config(args, torch.device("cpu"))
    assert config.hand_clarity == pytest.approx(expected, rel=1e-6) and expected != pytest.approx(30.0)
    args.hand_clarity = "reference"  # an explicit setting wins over the data
    assert generate_config(args, torch.device("cpu")).hand_clarity == "reference"
    args.hand_clarity, args.hand_clarity_data = "high", str(tmp_path / "nowhere")
    with pytest.raises(GenerateError, match="nowhere"):
        generate_config(args, torch.device("cpu"))
