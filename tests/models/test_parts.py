"""RCA, audio windows, encoders and pretrained loading (tiny)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

from cyberhost.models import SIZES, CyberHost, CyberHostConfig
from cyberhost.models.arcface import IResNet
from cyberhost.models.audio import AudioProjection
from cyberhost.models.rca import RegionCodebookAttention, gram_schmidt, orthonormality_error, qr_orthonormalise

from .conftest import build, inputs, run, wake_zero_inits


def test_qr_equals_gram_schmidt() -> None:
    rows = torch.randn(12, 40, dtype=torch.float64)
    gs = torch.stack(_textbook_gram_schmidt(list(rows)))
    torch.testing.assert_close(qr_orthonormalise(rows), gs, rtol=0, atol=1e-10)
    torch.testing.assert_close(gram_schmidt(rows), gs, rtol=0, atol=1e-10)


def _textbook_gram_schmidt(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    basis: list[torch.Tensor] = []
    for v in vectors:
        u = v - sum((torch.dot(v, e) * e for e in basis), torch.zeros_like(v))
        basis.append(u / torch.sqrt(torch.dot(u, u)))
    return basis


@pytest.mark.parametrize("method", ["qr", "gram_schmidt"])
def test_codebooks_orthonormal_after_forward(method: str) -> None:
    model = build(2, orthonormalize=method)
    run(model, inputs(2))
    rcas = [*model.face_rca.values(), *model.hand_rca.values()]
    assert len(rcas) == 3
    for rca in rcas:
        for book in (rca.c_spa, rca.c_temp):
            assert orthonormality_error(book.last.double()) < 1e-5


def test_rca_changes_features_only_where_mask_is_nonzero() -> None:
    torch.manual_seed(0)
    rca = RegionCodebookAttention(32, 16, 8, 8, heads=2)
    wake_zero_inits(rca)
    x = torch.randn(2 * 3, 32, 6, 6)
    identity = torch.randn(2, 5, 16, requires_grad=True)
    mask = torch.zeros(6, 1, 6, 6)
    mask[:, :, :3] = 1.0  # top half on
    out, logits = rca(x, identity, num_frames=3, mask_override=mask)
    assert logits.shape == (6, 1, 6, 6)
    params = [rca.c_spa.weight, rca.c_temp.weight]
    grads = torch.autograd.grad(out[:, :, 3:].sum(), [identity, *params], allow_unused=True, retain_graph=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)
    torch.testing.assert_close(out[:, :, 3:], x[:, :, 3:], rtol=0, atol=0)
    grads = torch.autograd.grad(out[:, :, :3].sum(), [identity, *params])
    assert all(g.abs().max() > 0 for g in grads)


def test_rca_is_identity_at_init() -> None:
    rca = RegionCodebookAttention(32, 16, 8, 8, heads=2)
    x = torch.randn(4, 32, 5, 5)
    out, _ = rca(x, torch.randn(2, 3, 16), num_frames=2)
    torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_audio_tokens_depend_only_on_their_window() -> None:
    proj = AudioProjection(layers=3, width=8, context=2, hidden=16, tokens=4, out_dim=12)
    feats = torch.randn(2, 10, 3, 8, requires_grad=True)
    tokens = proj(feats)
    assert tokens.shape == (2, 10, 4, 12)
    (grad,) = torch.autograd.grad(tokens[:, 5].sum(), feats)
    touched = grad.abs().flatten(2).amax(-1).amax(0)  # (F,)
    assert (touched[3:8] > 0).all() and touched[:3].max() == 0 and touched[8:].max() == 0
    (grad,) = torch.autograd.grad(proj(feats)[:, 0].sum(), feats)  # edge frames repeat the first feature
    assert grad.abs().flatten(2).amax(-1).amax(0)[3:].max() == 0


def test_audio_encoder_frame_count() -> None:
    """One second of 16 kHz audio -> tokens for 25 frames (wav2vec2's 50 Hz resampled to the frame times)."""
    tokens = build(2).encode_audio(torch.randn(2, 16000), 25)
    assert tokens.shape == (2, 25, 4, 32)  # which parts are frozen: test_cyberhost.test_declared_trainable_split


def test_hand_clarity_embedding_reads_validity_not_values() -> None:
    """An absent hand contributes the learned absent embedding, whatever value its slot holds."""
    from cyberhost.models.encoders import HandClarityEmbedding

    torch.manual_seed(0)
    emb = HandClarityEmbedding(16, freq_dim=8)
    wake_zero_inits(emb)
    valid = torch.tensor([[[False, True], [True, False]]])  # (B=1, F=2, 2)
    a = emb(torch.tensor([[[0.0, 30.0], [10.0, 0.0]]]), valid)
    b = emb(torch.tensor([[[5e3, 30.0], [10.0, -7.0]]]), valid)  # other values where absent
    assert a.shape == (2, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    present_zero = emb(torch.tensor([[[0.0, 30.0], [10.0, 0.0]]]), torch.ones(1, 2, 2, dtype=torch.bool))
    assert not torch.allclose(a, present_zero)  # absent is not "score 0"
    torch.testing.assert_close(emb(torch.tensor([[[3.0, 30.0]]])), emb(torch.tensor([[[3.0, 30.0]]]),
                                                                      torch.ones(1, 1, 2, dtype=torch.bool)))


def test_hand_encoder_encodes_each_hand_on_its_own() -> None:
    """Left tokens see only the left crop, right tokens only the right; the hand embedding tells them apart."""
    from cyberhost.models.encoders import HandEncoder

    torch.manual_seed(0)
    enc = HandEncoder((8, 16), id_dim=12, grid=2)
    t = enc.tokens_per_hand
    crops = torch.randn(3, 2, 3, 32, 32, requires_grad=True)
    tokens = enc(crops)
    assert tokens.shape == (3, 2 * t, 12)
    for hand, part in ((0, tokens[:, :t]), (1, tokens[:, t:])):
        (grad,) = torch.autograd.grad(part.sum(), crops, retain_graph=True)
        per_hand = grad.abs().flatten(2).amax(-1)  # (B, 2)
        assert (per_hand[:, hand] > 0).all() and per_hand[:, 1 - hand].max() == 0
    same = enc(crops[:, :1].expand(-1, 2, -1, -1, -1))  # the same crop as both hands
    difference = same[:, :t] - same[:, t:]
    torch.testing.assert_close(difference, (enc.hand_embedding[0] - enc.hand_embedding[1]).expand_as(difference))
    assert difference.abs().max() > 0


def _awake_rca(seed: int = 0) -> RegionCodebookAttention:
    torch.manual_seed(seed)
    rca = RegionCodebookAttention(32, 16, 8, 8, heads=2)
    wake_zero_inits(rca)
    return rca


def test_rca_masked_identity_tokens_have_no_influence() -> None:
    """Masked tokens get zero gradient, and the masked attention equals attention over the valid subset."""
    rca = _awake_rca()
    frames, ones = 3, torch.ones(6, 1, 4, 4)
    x = torch.randn(2 * frames, 32, 4, 4)
    identity = torch.randn(2, 6, 16, requires_grad=True)
    valid = torch.tensor([[True, True, True, False, False, False], [True] * 6])
    out, _ = rca(x, identity, frames, identity_valid=valid, mask_override=ones)
    (grad,) = torch.autograd.grad(out.sum(), identity)
    per_token = grad.abs().amax(-1)  # (B, T)
    assert per_token[0, 3:].max() == 0 and (per_token[0, :3] > 0).all() and (per_token[1] > 0).all()
    subset, _ = rca(x[:frames], identity[:1, :3], frames, mask_override=ones[:frames])  # no mask: only the 3 valid
    torch.testing.assert_close(out[:frames], subset, rtol=1e-5, atol=1e-6)
    full, _ = rca(x[frames:], identity[1:], frames, mask_override=ones[frames:])
    torch.testing.assert_close(out[frames:], full, rtol=1e-5, atol=1e-6)


def test_rca_all_tokens_invalid_gives_exactly_no_identity_term() -> None:
    rca = _awake_rca()
    frames, ones = 2, torch.ones(4, 1, 4, 4)
    x = torch.randn(2 * frames, 32, 4, 4)
    identity = torch.randn(2, 5, 16, requires_grad=True)
    valid = torch.tensor([[False] * 5, [True] * 5])
    out, _ = rca(x, identity, frames, identity_valid=valid, mask_override=ones)
    assert torch.isfinite(out).all()
    without, _ = rca(x, None, frames, mask_override=ones)
    torch.testing.assert_close(out[:frames], without[:frames], rtol=0, atol=0)  # F_id = 0 exactly
    assert not torch.allclose(out[frames:], without[frames:])
    (grad,) = torch.autograd.grad(out.sum(), identity)
    assert torch.isfinite(grad).all() and grad[0].abs().max() == 0 and grad[1].abs().max() > 0
    # dropping the reference removes the identity term of the other sample too; all-valid == no mask
    dropped, _ = rca(x, identity, frames, identity_valid=valid, drop_reference=torch.tensor([False, True]),
                     mask_override=ones)
    torch.testing.assert_close(dropped, without, rtol=0, atol=0)
    a, _ = rca(x, identity, frames, identity_valid=torch.ones(2, 5, dtype=torch.bool), mask_override=ones)
    b, _ = rca(x, identity, frames, mask_override=ones)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _numpy_orthonormal_rows(weight: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows of ``weight`` by numpy's QR with diag(R) > 0 (the Gram-Schmidt basis), independently."""
    q, r = np.linalg.qr(weight.detach().double().numpy().T)
    return torch.from_numpy((q * np.sign(np.diag(r))).T.copy()).float()


@pytest.mark.parametrize("method", ["qr", "gram_schmidt"])
def test_codebook_attention_reads_orthonormalised_not_raw_bases(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if RCA attended to the raw codebook parameters instead of their orthonormalised bases."""
    import copy

    from cyberhost.models.rca import Codebook

    torch.manual_seed(0)
    rca = RegionCodebookAttention(32, 16, 8, 8, heads=2, method=method)
    wake_zero_inits(rca)
    with torch.no_grad():  # far from orthonormal: correlated rows of unequal norms
        for book in (rca.c_spa, rca.c_temp):
            raw = torch.randn(8, 32) + 2.0 * torch.randn(1, 32)
            book.weight.copy_(raw * torch.linspace(0.3, 3.0, 8)[:, None])
            assert orthonormality_error(book.weight.detach()) > 0.5
    x, ones = torch.randn(6, 32, 4, 4), torch.ones(6, 1, 4, 4)
    got, _ = rca(x, None, 3, mask_override=ones)

    explicit = copy.deepcopy(rca)  # the same network given bases that are orthonormal already
    with torch.no_grad():
        for book in (explicit.c_spa, explicit.c_temp):
            book.weight.copy_(_numpy_orthonormal_rows(book.weight))
    want, _ = explicit(x, None, 3, mask_override=ones)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(Codebook, "forward", lambda self: self.weight.float())  # what reading the raw bases gives
    raw_out, _ = rca(x, None, 3, mask_override=ones)
    assert (raw_out - got).abs().max() > 100 * (want - got).abs().max() + 1e-4


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


def test_pretrained_dirs_load_exactly(tmp_path: Path) -> None:
    paths = _save_tiny_pretrained(tmp_path)
    model = CyberHost(CyberHostConfig(size="tiny", stage=2, face_encoder="arcface", **paths))
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "sd15" / "unet")
    for name, tensor in unet.state_dict().items():
        assert torch.equal(model.reference_net.state_dict()[name], tensor), name
        assert torch.equal(model.unet.state_dict()[name], tensor), name
    adapter = MotionAdapter.from_pretrained(tmp_path / "motion")
    for i, block in enumerate(adapter.down_blocks):
        for name, tensor in block.motion_modules.state_dict().items():
            assert torch.equal(model.unet.down_blocks[i].motion_modules.state_dict()[name], tensor)
    vae = AutoencoderKL.from_pretrained(tmp_path / "sd15" / "vae")
    assert all(torch.equal(model.vae.state_dict()[k], v) for k, v in vae.state_dict().items())
    w2v = Wav2Vec2Model.from_pretrained(tmp_path / "wav2vec2")
    assert all(torch.equal(model.audio.wav2vec2.state_dict()[k], v) for k, v in w2v.state_dict().items())
    arc_pth = CyberHost(CyberHostConfig(size="tiny", stage=2, face_encoder="arcface",
                                        **{**paths, "arcface_path": str(tmp_path / "backbone.pth")}))
    for k, v in model.face_encoder.state_dict().items():
        assert torch.equal(arc_pth.face_encoder.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.face_encoder.parameters())
    run(model, inputs(2))  # and it runs


def test_missing_pretrained_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / "unet")):
        CyberHost(CyberHostConfig(size="tiny", sd15_path=str(tmp_path / "nope")))
    (tmp_path / "adapter").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        CyberHost(CyberHostConfig(size="tiny", stage=2, motion_adapter_path=str(tmp_path / "adapter")))
    with pytest.raises(FileNotFoundError, match="arcface"):
        CyberHost(CyberHostConfig(size="tiny", stage=2, face_encoder="arcface", arcface_path=str(tmp_path / "a.pth")))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="size"):
        CyberHostConfig(size="huge")
    with pytest.raises(ValueError, match="RCA block"):
        CyberHostConfig(face_rca_blocks=["down9"])


def test_talking_head_mode_has_no_hand_rca() -> None:
    model = build(2, hand_rca_blocks=[])
    out, _ = run(model, inputs(2))
    assert out.hand_masks == [] and out.heatmaps == [] and len(out.face_masks) == 1


def test_shared_codebook_projection_equals_per_row_projection() -> None:
    """Projecting a codebook once and broadcasting it equals diffusers' attention on the expanded rows."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from cyberhost.models.attention import AddedCrossAttention

    torch.manual_seed(0)
    layer = AddedCrossAttention(32, 32, heads=4)
    wake_zero_inits(layer)
    tokens, book = torch.randn(6, 10, 32), torch.randn(1, 8, 32)
    got = layer(tokens, book)
    layer.attn.set_processor(AttnProcessor2_0())
    want = layer.attn(tokens, encoder_hidden_states=book.expand(6, -1, -1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_pretrained_adapter_mid_and_up_blocks_load_exactly(tmp_path: Path) -> None:
    paths = _save_tiny_pretrained(tmp_path)
    model = CyberHost(CyberHostConfig(size="tiny", stage=2, motion_adapter_path=paths["motion_adapter_path"]))
    adapter = MotionAdapter.from_pretrained(tmp_path / "motion")
    pairs = [(adapter.mid_block.motion_modules, model.unet.mid_block.motion_modules)]
    pairs += [(a.motion_modules, u.motion_modules) for a, u in zip(adapter.up_blocks, model.unet.up_blocks, strict=True)]
    for theirs, ours in pairs:
        mine = ours.state_dict()
        for name, tensor in theirs.state_dict().items():
            assert torch.equal(mine[name], tensor), name


def test_missing_vae_and_wav2vec2_are_named(tmp_path: Path) -> None:
    spec = SIZES["tiny"]
    UNet2DConditionModel(**spec.unet).save_pretrained(tmp_path / "sd15" / "unet")  # a VAE-less SD folder
    with pytest.raises(FileNotFoundError, match=r"SD-1.5 VAE.*" + str(tmp_path / "sd15" / "vae")):
        CyberHost(CyberHostConfig(size="tiny", sd15_path=str(tmp_path / "sd15")))
    (tmp_path / "w2v").mkdir()
    (tmp_path / "w2v" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"wav2vec2: no weights in .*w2v"):
        CyberHost(CyberHostConfig(size="tiny", stage=2, wav2vec2_path=str(tmp_path / "w2v")))
