"""The forward split for CUDA graphs: ``plan`` (the one host read) and ``predict`` (device work only)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cyberhost.models.graphs import PlannedForward

from .conftest import LATENT, build, sampling_inputs, wake_zero_inits

HOST_READS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "masked_select", "unique_dim",
              "_unique2", "unique_consecutive"}
"""aten ops whose result the host must wait for (a CUDA graph cannot record them)."""


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _model():
    model = build(2).eval()
    wake_zero_inits(model)  # the stage-2 additions do something, so every branch of predict runs
    return model


def test_predict_reads_nothing_back_and_matches_forward() -> None:
    model = _model()
    inputs = sampling_inputs(model)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(3, 3, 4, LATENT, LATENT, generator=g), torch.tensor([400, 400, 400])
    with torch.no_grad():
        expected = model(x, t, **inputs).sample
        with _Ops() as whole:
            model(x, t, **inputs)
        plan = model.plan(x.shape[:2], **inputs)
        with _Ops() as device_only:
            got = model.predict(x, t, plan).sample
    assert whole.names & HOST_READS, "the forward's own host read must show (else this test cannot fail)"
    assert not device_only.names & HOST_READS, sorted(device_only.names & HOST_READS)
    assert model.state.reference_mode == "mixed"  # the plan decided the batched CFG's groups
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_planned_forward_matches_the_network_on_the_cpu() -> None:
    model = _model()
    inputs = sampling_inputs(model)
    graphed = PlannedForward(model, inputs, cuda_graph=True)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for step in range(3):
            x, t = torch.randn(3, 3, 4, LATENT, LATENT, generator=g), torch.full((3,), 900 - 300 * step)
            torch.testing.assert_close(graphed(x, t), model(x, t, **inputs).sample, atol=0, rtol=0)
    assert not graphed.recorded


def test_a_plans_injection_state_can_be_put_back() -> None:
    """A graph records from its own plan's state although an eager forward planned another one since."""
    model = _model()
    inputs = sampling_inputs(model)
    with torch.no_grad():
        model.plan((3, 3), **inputs)  # the batched CFG's mixed reference batch
        planned = model.state.planned()
        blocks = model.state.reference_blocks
        assert blocks == (True, 1)  # [dropped | kept, kept]: sliced, not gathered
        model.plan((3, 3), **{**inputs, "drop_reference": None, "drop_audio": None})  # another forward
        assert model.state.reference_mode == "kept" and model.state.reference_blocks is None
        model.state.restore(planned)
    assert model.state.reference_mode == "mixed" and model.state.reference_blocks == blocks
    readers = model.state._readers["reference"]
    assert readers and all(r.tokens is model.state.reference.get(r.source) for r in readers)
