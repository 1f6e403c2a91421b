"""rtmlib backend with a stubbed ``rtmlib.Wholebody``: 133-point mapping, RGB -> BGR, scores, and missing-file errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from cyberhost.data.schema import NUM_KEYPOINTS
from cyberhost.media.keypoints import RTMLibPaths, RTMLibWholebody, dominant_person, make_backend
from data_prep.config import KeypointConfig


class FakeWholebody:
    """Records its arguments and the frames it sees; returns fixed (P, 133, 2) keypoints and (P, 133) scores."""

    instances: list[FakeWholebody] = []

    def __init__(self, **kwargs):
        self.kwargs, self.frames = kwargs, []
        rng = np.random.default_rng(0)
        self.keypoints = rng.uniform(0, 100, (2, NUM_KEYPOINTS, 2))  # float64, as rtmlib returns
        self.keypoints[1] *= 3  # the second person is larger
        self.scores = rng.uniform(0, 1, (2, NUM_KEYPOINTS))
        FakeWholebody.instances.append(self)

    def __call__(self, image):
        self.frames.append(image.copy())
        return self.keypoints, self.scores


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rtmlib", types.SimpleNamespace(Wholebody=FakeWholebody))
    FakeWholebody.instances.clear()
    det, pose = tmp_path / "yolox_m_8xb8-300e_humanart-c2c7a14a.onnx", tmp_path / "dw-ll_ucoco_384.onnx"
    det.write_bytes(b"onnx")
    pose.write_bytes(b"onnx")
    return det, pose


def test_wholebody_output_maps_to_the_133_point_layout(models):
    det, pose = models
    cfg = KeypointConfig(backend="rtmlib", rtmlib_det=str(det), rtmlib_pose=str(pose), rtmlib_pose_input_size=[192, 256], rtmlib_device="cuda")
    backend = make_backend(cfg.backend, **cfg.backend_options())
    fake = FakeWholebody.instances[-1]
    assert fake.kwargs == {
        "det": str(det), "det_input_size": (640, 640), "pose": str(pose), "pose_input_size": (192, 256),
        "to_openpose": False, "backend": "onnxruntime", "device": "cuda",
    }  # fmt: skip
    frame = np.zeros((4, 5, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # R, G, B
    out = backend(frame)
    assert out.shape == (2, NUM_KEYPOINTS, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., :2], fake.keypoints.astype(np.float32))
    np.testing.assert_allclose(out[..., 2], fake.scores.astype(np.float32))
    seen = fake.frames[-1]
    assert seen.shape == frame.shape and seen.flags["C_CONTIGUOUS"]
    assert (seen[..., 0] == 30).all() and (seen[..., 1] == 20).all() and (seen[..., 2] == 10).all()  # BGR
    keypoints, ratio = dominant_person(out, 0.0)
    np.testing.assert_allclose(keypoints[:, :2], fake.keypoints[1].astype(np.float32))  # the larger person
    assert 0 < ratio < 1


def test_one_person_and_no_person_keep_the_person_axis(models):
    det, pose = models
    backend = RTMLibWholebody(RTMLibPaths(str(det), str(pose)))
    fake = FakeWholebody.instances[-1]
    fake.keypoints, fake.scores = fake.keypoints[0], fake.scores[0]  # (133, 2) and (133,)
    assert backend(np.zeros((4, 4, 3), np.uint8)).shape == (1, NUM_KEYPOINTS, 3)
    fake.keypoints, fake.scores = np.zeros((0, NUM_KEYPOINTS, 2)), np.zeros((0, NUM_KEYPOINTS))
    assert backend(np.zeros((4, 4, 3), np.uint8)).shape == (0, NUM_KEYPOINTS, 3)


def test_missing_onnx_paths_are_named_with_the_config_keys(models, tmp_path):
    det, _ = models
    with pytest.raises(FileNotFoundError) as err:
        make_backend("rtmlib", **KeypointConfig(backend="rtmlib", rtmlib_det=str(det), rtmlib_pose=str(tmp_path / "nope.onnx")).backend_options())
    text = str(err.value)
    assert f"pose={str(tmp_path / 'nope.onnx')!r}" in text and "det=" not in text  # only the missing one
    assert "keypoints.rtmlib_det / keypoints.rtmlib_pose" in text and "conf/data/prep.yaml" in text
    assert "nothing is downloaded" in text and "README" in text
    with pytest.raises(FileNotFoundError, match=r"det='/nowhere/det.onnx'.*pose=''"):
        RTMLibWholebody(RTMLibPaths(det="/nowhere/det.onnx", pose=""))
    with pytest.raises(FileNotFoundError, match=r"det='', pose='.+'"):  # a folder is not a model file
        RTMLibWholebody(RTMLibPaths(det="", pose=str(tmp_path)))
    assert not FakeWholebody.instances  # rtmlib (which would download) was never reached
    with pytest.raises(ValueError, match="backend"):
        make_backend("openpose")
