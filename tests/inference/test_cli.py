"""End-to-end ``cyberhost generate`` through the real CLI, in-process, on a tiny checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
from safetensors.torch import save_file

from cyberhost.inference.cli import main

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
