"""CUDA graphs for sampling: the denoising network's device work recorded once per segment and replayed.

Sampling calls the network 25-40 times per segment with the same conditions and new ``x_t`` and
``t``. Eager, each call has the host launch thousands of small kernels one by one, and on a fast
GPU the device waits for the host for much of the call. A CUDA graph records the launches once
and replays them in one go: the host cost of a call drops to copying ``x_t`` and ``t`` in.

What is recorded is :meth:`CyberHost.predict` -- the forward after its one device-to-host read
(:meth:`CyberHost.plan`), so the recording holds no host decision on tensor values. The tensors
the plan holds (reference features, motion frames, audio tokens, the injection state's index
tensors) are read in place by the replays, so they must stay unchanged while a
:class:`GraphedForward` is in use; the sampling pipeline makes one per segment. The graph keeps
them alive itself, and records from the injection state of its own plan: an eager call in
between plans anew and replaces the state's tensors, whose memory must not go back to the
allocator while a recording reads it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .cyberhost import CyberHost, ForwardPlan

log = logging.getLogger(__name__)


class GraphedForward:
    """``model(x, t, **inputs).sample`` from a CUDA graph: eager on the first call, recorded on the second.

    The first call plans the forward (its host read and the injection state) and runs
    :meth:`~CyberHost.predict` eagerly on a side stream: the warm-up a recording needs (cuBLAS and
    attention workspaces), whose result is that call's answer. The second call records
    ``predict`` into a graph and replays it; every later call copies ``x`` and ``t`` into the
    recorded input buffers and replays. On a CPU, or where recording fails (the error is logged
    once), every call runs eagerly. Call :meth:`close` to free the recording's memory.

    Args:
        model: the network (eval mode; nothing may change its injection state between calls).
        inputs: the keyword arguments of ``model.forward`` besides x_t and t, fixed for the
            graph's lifetime (tensors included: the replays read them in place).
    """

    def __init__(self, model: CyberHost, inputs: dict[str, Any]) -> None:
        self.model, self.inputs = model, inputs
        self.plan: ForwardPlan | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = False  # recording failed (or a CPU): call the network as usual
        self._x: Tensor | None = None
        self._t: Tensor | None = None
        self._out: Tensor | None = None
        self._planned: dict[str, object] = {}  # the injection state the plan set: the recording reads it

    @property
    def recorded(self) -> bool:
        """Whether later calls replay a graph."""
        return self.graph is not None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.graph is not None:
            self._x.copy_(x)
            self._t.copy_(t)
            self.graph.replay()
            return self._out.clone()  # the next replay overwrites the recorded output
        if self.eager or x.device.type != "cuda":
            return self.model(x, t, **self.inputs).sample
        if self.plan is None:
            return self._warm_up(x, t)
        return self._record(x, t)

    def _warm_up(self, x: Tensor, t: Tensor) -> Tensor:
        self.plan = self.model.plan(x.shape[:2], **self.inputs)
        self._planned = self.model.state.planned()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            out = self.model.predict(x, t, self.plan).sample
        torch.cuda.current_stream(x.device).wait_stream(side)
        return out

    def _record(self, x: Tensor, t: Tensor) -> Tensor:
        self._x, self._t = x.clone(), t.clone()
        self.model.state.restore(self._planned)  # an eager call since may have planned another forward
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._out = self.model.predict(self._x, self._t, self.plan).sample
        except RuntimeError as err:  # an op that cannot be recorded: say so once, then run eagerly
            log.warning("CUDA graph recording of the denoising network failed, sampling eagerly: %s", err)
            self.close()
            self.eager = True
            return self.model(x, t, **self.inputs).sample
        self.graph = graph
        log.info("recorded the denoising network's call for batch %s in a CUDA graph", tuple(x.shape))
        graph.replay()
        return self._out.clone()

    def close(self) -> None:
        """Free the recording (its memory pool) and the input/output buffers."""
        self.graph = self._x = self._t = self._out = None
        self.plan, self._planned = None, {}
