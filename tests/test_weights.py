"""Pretrained folders into the network (cyberhost.weights): exact tensors, what the libraries' own loaders give,
the meta path, skipped sources, and errors that name the folder, the field or the keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

from cyberhost import weights
from cyberhost.models import SIZES, CyberHost, CyberHostConfig
from cyberhost.models.arcface import IResNet
from tests.models.conftest import inputs, run


def _save_tiny_pretrained(root: Path) -> dict[str, str]:
    spec = SIZES["tiny"]
    torch.manual_seed(11)
    UNet2DConditionModel(**spec.unet).save_pretrained(root / "sd15" / "unet")
    AutoencoderKL(**spec.vae).save_pretrained(root / "sd15" / "vae")
    MotionAdapter(**spec.motion_adapter).save_pretrained(root / "motion")
    Wav2Vec2Model(Wav2Vec2Config(**spec.wav2vec2)).save_pretrained(root / "wav2vec2")
    arc = IResNet("r18")
    arc.features.running_mean.uniform_()
    save_file({k: v.contiguous() for k, v in arc.state_dict().items()}, str(root / "arcface.safetensors"))
    torch.save(arc.state_dict(), root / "backbone.pth")
    return dict(sd15_path=str(root / "sd15"), motion_adapter_path=str(root / "motion"),
                wav2vec2_path=str(root / "wav2vec2"), arcface_path=str(root / "arcface.safetensors"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _save_tiny_pretrained(tmp_path_factory.mktemp("pretrained"))


def _loaded(paths: dict[str, str], meta: bool = False, **kwargs: object) -> CyberHost:
    cfg = CyberHostConfig(size="tiny", stage=2, face_encoder="arcface", **{**paths, **kwargs})
    with torch.device("meta") if meta else torch.device("cpu"):
        model = CyberHost(cfg)  # reads no file, even with every path set
    weights.load_network(model)
    return model


def test_pretrained_dirs_load_exactly(pretrained: dict[str, str]) -> None:
    model = _loaded(pretrained)
    root = Path(pretrained["sd15_path"])
    unet = UNet2DConditionModel.from_pretrained(root / "unet")  # diffusers' own loader: the independent reading
    for name, tensor in unet.state_dict().items():
        assert torch.equal(model.reference_net.state_dict()[name], tensor), name
        assert torch.equal(model.unet.state_dict()[name], tensor), name
    adapter = MotionAdapter.from_pretrained(pretrained["motion_adapter_path"])
    pairs = [(adapter.mid_block.motion_modules, model.unet.mid_block.motion_modules)]
    pairs += [(a.motion_modules, u.motion_modules) for a, u in zip(adapter.down_blocks, model.unet.down_blocks, strict=True)]
    pairs += [(a.motion_modules, u.motion_modules) for a, u in zip(adapter.up_blocks, model.unet.up_blocks, strict=True)]
    for theirs, ours in pairs:
        mine = ours.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in theirs.state_dict().items())
    vae = AutoencoderKL.from_pretrained(root / "vae")
    assert all(torch.equal(model.vae.state_dict()[k], v) for k, v in vae.state_dict().items())
    w2v = Wav2Vec2Model.from_pretrained(pretrained["wav2vec2_path"]).eval()
    assert all(torch.equal(model.audio.wav2vec2.state_dict()[k], v) for k, v in w2v.state_dict().items())
    wave = torch.randn(1, 3200)
    with torch.no_grad():  # the same module the library builds: same output, not only the same tensors
        torch.testing.assert_close(model.audio.wav2vec2(wave).last_hidden_state, w2v(wave).last_hidden_state)
    pth = _loaded({**pretrained, "arcface_path": str(Path(pretrained["arcface_path"]).with_name("backbone.pth"))})
    for k, v in model.face_encoder.state_dict().items():
        assert torch.equal(pth.face_encoder.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.face_encoder.parameters())
    run(model, inputs(2))  # and it runs


def test_meta_build_loads_the_same_tensors(pretrained: dict[str, str]) -> None:
    eager, meta = _loaded(pretrained), _loaded(pretrained, meta=True)
    want, got = eager.state_dict(), meta.state_dict()
    from_files = [k for k in want if k.startswith(("vae.", "unet.", "reference_net.", "audio.wav2vec2.", "face_encoder."))]
    assert len(from_files) > 500 and all(torch.equal(got[k], want[k]) for k in from_files)
    assert not weights.is_meta(meta) and all(torch.isfinite(v.float()).all() for v in got.values())


def test_old_vae_attention_names_are_converted(pretrained: dict[str, str], tmp_path: Path) -> None:
    """A VAE saved with diffusers' deprecated attention names (query/key/value/proj_attn) loads as diffusers loads it."""
    src = Path(pretrained["sd15_path"])
    old = tmp_path / "sd15"
    (old / "vae").mkdir(parents=True)
    (old / "vae" / "config.json").write_text((src / "vae" / "config.json").read_text())
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(str(src / "vae" / "diffusion_pytorch_model.safetensors"))
    renamed = {}
    for key, value in state.items():
        for new, dep in names.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{dep}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    save_file(renamed, str(old / "vae" / "diffusion_pytorch_model.safetensors"))
    model = CyberHost(CyberHostConfig(size="tiny", stage=1, sd15_path=str(old)))  # a folder with only vae/
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}  # the "checkpoint": all but the VAE
    plan = weights.load_network(model, rest)
    assert plan.sources == ["sd15_path/vae"] and plan.skipped == ["sd15_path/unet"]
    want = AutoencoderKL.from_pretrained(old / "vae").state_dict()
    assert all(torch.equal(model.vae.state_dict()[k], v) for k, v in want.items())


def test_sources_the_checkpoint_covers_are_not_read(tmp_path: Path) -> None:
    s1 = CyberHost(CyberHostConfig(size="tiny", stage=1))
    cfg = CyberHostConfig(size="tiny", stage=1, sd15_path=str(tmp_path / "nowhere"))
    with torch.device("meta"):
        model = CyberHost(cfg)
    plan = weights.load_network(model, s1.state_dict())
    assert plan.sources == [] and plan.skipped == ["sd15_path/vae", "sd15_path/unet"] and plan.initialised == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in s1.state_dict().items())


def test_missing_pretrained_paths_are_named(tmp_path: Path) -> None:
    CyberHost(CyberHostConfig(size="tiny", sd15_path=str(tmp_path / "nope")))  # construction reads nothing
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / "vae")):
        weights.load_network(CyberHost(CyberHostConfig(size="tiny", sd15_path=str(tmp_path / "nope"))))
    (tmp_path / "adapter").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        weights.load_network(CyberHost(CyberHostConfig(size="tiny", stage=2, motion_adapter_path=str(tmp_path / "adapter"))))
    with pytest.raises(FileNotFoundError, match="arcface"):
        weights.load_network(CyberHost(CyberHostConfig(size="tiny", stage=2, face_encoder="arcface",
                                                       arcface_path=str(tmp_path / "a.pth"))))


def test_missing_vae_and_wav2vec2_are_named(tmp_path: Path) -> None:
    spec = SIZES["tiny"]
    UNet2DConditionModel(**spec.unet).save_pretrained(tmp_path / "sd15" / "unet")  # a VAE-less SD folder
    with pytest.raises(FileNotFoundError, match=r"SD-1.5 VAE.*" + str(tmp_path / "sd15" / "vae")):
        weights.load_network(CyberHost(CyberHostConfig(size="tiny", sd15_path=str(tmp_path / "sd15"))))
    (tmp_path / "w2v").mkdir()
    (tmp_path / "w2v" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"wav2vec2: no weights in .*w2v"):
        weights.load_network(CyberHost(CyberHostConfig(size="tiny", stage=2, wav2vec2_path=str(tmp_path / "w2v"))))


def test_folder_of_another_architecture_names_the_field(tmp_path: Path) -> None:
    cfg = {**SIZES["tiny"].wav2vec2, "hidden_size": 48}
    Wav2Vec2Model(Wav2Vec2Config(**cfg)).save_pretrained(tmp_path / "w2v")
    with pytest.raises(weights.PretrainedMismatchError, match=r"hidden_size=48 \(size 'tiny' builds 32\)"):
        weights.load_network(CyberHost(CyberHostConfig(size="tiny", stage=2, wav2vec2_path=str(tmp_path / "w2v"))))
    unet = {**SIZES["tiny"].unet, "block_out_channels": (32, 48)}
    UNet2DConditionModel(**unet).save_pretrained(tmp_path / "sd15" / "unet")
    AutoencoderKL(**SIZES["tiny"].vae).save_pretrained(tmp_path / "sd15" / "vae")
    with pytest.raises(weights.PretrainedMismatchError, match=r"SD-1.5 UNet.*block_out_channels=\[32, 48\]"):
        weights.load_network(CyberHost(CyberHostConfig(size="tiny", sd15_path=str(tmp_path / "sd15"))))


def test_checkpoint_mismatch_names_keys() -> None:
    model = CyberHost(CyberHostConfig(size="tiny", stage=1))
    state = dict(model.state_dict())
    del state["unet.conv_in.weight"]
    state["surplus"] = torch.zeros(1)
    state["text_context"] = torch.zeros(1, 3, 32)
    with pytest.raises(weights.WeightsMismatchError) as info:
        weights.load_network(model, state, what="x")
    err = info.value
    assert err.missing == ["unet.conv_in.weight"] and err.unexpected == ["surplus"]
    assert err.mismatched == ["text_context: checkpoint (1, 3, 32) vs network (1, 1, 32)"]
    del state["surplus"], state["text_context"]
    plan = weights.load_network(model, state, allow_missing=lambda part: part.name in ("unet", "text_context"))
    assert sorted(plan.initialised) == ["text_context", "unet.conv_in.weight"]
