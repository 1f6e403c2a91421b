"""Sampling's network calls: planned once per segment, then only the device work per step, optionally from a CUDA graph.

Sampling calls the network 25-40 times per segment with the same conditions and new ``x_t`` and
``t``. What depends on the conditions alone -- the one device-to-host read of the dropout flags,
the injection state, the Pose Encoder's residual of the driving map, the clarity embedding -- is
:meth:`CyberHost.plan`; :class:`PlannedForward` plans once and calls :meth:`CyberHost.predict`
at every step.

A CUDA graph can record ``predict`` (it holds no host decision on tensor values) and replay it
with new ``x_t`` and ``t``: the host cost of a call drops to copying them in. That pays only where
the device waits for the host to launch kernels; the sd15 sampling call keeps the GPU busy (the
generation benchmark's ``--calls`` profile), so it is off by default. The tensors the plan holds
(reference features, motion frames, audio tokens, the injection state's index tensors) are read
in place by the replays: they must stay unchanged while a :class:`PlannedForward` is in use (the
sampling pipeline makes one per segment). It keeps them alive itself, and restores the injection
state of its own plan before each call: an eager forward in between plans anew and replaces the
state's tensors.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .cyberhost import CyberHost, ForwardPlan

log = logging.getLogger(__name__)


class PlannedForward:
    """``model(x, t, **inputs).sample`` for fixed ``inputs``: planned at the first call, predicted at each.

    With ``cuda_graph`` on a CUDA device, the first call also runs the prediction on a side stream
    (the warm-up a recording needs: cuBLAS and attention workspaces), the second records it into a
    graph and replays it, and every later call copies ``x`` and ``t`` into the recorded input
    buffers and replays. Where recording fails (the error is logged once) the calls stay eager.
    Call :meth:`close` to free the plan and the recording's memory.

    Args:
        model: the network (eval mode).
        inputs: the keyword arguments of ``model.forward`` besides x_t and t, fixed for the
            object's lifetime (tensors included: the prediction reads them in place).
        cuda_graph: record the prediction in a CUDA graph (on a CUDA device).
    """

    def __init__(self, model: CyberHost, inputs: dict[str, Any], cuda_graph: bool = False) -> None:
        self.model, self.inputs, self.cuda_graph = model, inputs, cuda_graph
        self.plan: ForwardPlan | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = False  # recording failed: predict as usual
        self._x: Tensor | None = None
        self._t: Tensor | None = None
        self._out: Tensor | None = None
        self._planned: dict[str, object] = {}  # the injection state the plan set: every prediction reads it

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
        graphed = self.cuda_graph and not self.eager and x.device.type == "cuda"
        if self.plan is None:
            self.plan = self.model.plan(x.shape[:2], **self.inputs)
            self._planned = self.model.state.planned()
            return self._warm_up(x, t) if graphed else self.model.predict(x, t, self.plan).sample
        self.model.state.restore(self._planned)  # an eager forward since may have planned another batch
        return self._record(x, t) if graphed else self.model.predict(x, t, self.plan).sample

    def _warm_up(self, x: Tensor, t: Tensor) -> Tensor:
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            out = self.model.predict(x, t, self.plan).sample
        torch.cuda.current_stream(x.device).wait_stream(side)
        return out

    def _record(self, x: Tensor, t: Tensor) -> Tensor:
        self._x, self._t = x.clone(), t.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._out = self.model.predict(self._x, self._t, self.plan).sample
        except RuntimeError as err:  # an op that cannot be recorded: say so once, then predict eagerly
            log.warning("CUDA graph recording of the denoising network failed, sampling eagerly: %s", err)
            self.graph = self._x = self._t = self._out = None
            self.eager = True
            return self.model.predict(x, t, self.plan).sample
        self.graph = graph
        log.info("recorded the denoising network's call for batch %s in a CUDA graph", tuple(x.shape))
        graph.replay()
        return self._out.clone()

    def close(self) -> None:
        """Free the plan, the recording (its memory pool) and the input/output buffers."""
        self.graph = self._x = self._t = self._out = None
        self.plan, self._planned = None, {}
