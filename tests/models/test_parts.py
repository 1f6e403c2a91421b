"""RCA, audio windows and encoders (tiny); pretrained folders are tests/test_weights.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cyberhost.models import CyberHostConfig
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
