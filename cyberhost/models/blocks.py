"""The blocks that repeat: compiled region by region, and checkpointed block by block.

Regional compilation: ``torch.compile`` the blocks that repeat, not the whole network.

Whole-network compilation of the denoiser did not finish in minutes, and compiling each UNet
down/mid/up block compiles every block anew (they differ in width and resolution). What repeats
in CyberHost is a handful of block *classes*: diffusers' ``ResnetBlock2D`` (both UNets and the
VAE), ``Transformer2DModel`` (spatial attention with the reference injection and the audio
attention), ``AnimateDiffTransformer3D`` (temporal attention with the motion frames) and our
Region Codebook Attention. Each instance is compiled (``nn.Module.compile``), so the code between
blocks (the UNet runner, RCA hooks, the conditioning) stays eager, and all instances of a class
share one code object: dynamo treats their parameters as inputs, and after the first instance
with other sizes marks the differing sizes dynamic ("automatic dynamic shapes"), so a class is
compiled a few times (static, then dynamic; with and without gradients), not once per block.
The processors read nothing that differs between layers but tensors (see
:class:`~cyberhost.models.attention.InjectionState`), which is what lets instances share a graph.

Compiled artefacts are cached between runs by inductor's FX-graph and autograd caches (on by
default in torch >= 2.6; ``TORCHINDUCTOR_CACHE_DIR`` chooses the folder), so a second run of the
same network compiles in a fraction of the first run's time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

#: the block classes compiled, by name (diffusers' classes are looked up lazily, to match any version's module path)
REGION_CLASSES = ("ResnetBlock2D", "Transformer2DModel", "AnimateDiffTransformer3D", "RegionCodebookAttention")


@dataclass
class CompileConfig:
    """How the network is compiled (``model.compile`` in the configs).

    Attributes:
        enabled: compile the repeated blocks (``False``: eager everywhere).
        vae: also compile the VAE's blocks (its encoder runs on every training batch).
        mode: ``torch.compile`` mode (None = default; ``"max-autotune-no-cudagraphs"`` tunes
            matmuls too, for a much longer first compile).
        recompile_limit: dynamo's per-code-object cache size; the block classes need a few entries
            each (static/dynamic sizes, training and no-grad calls), the default 8 can be too few.
        backend: ``torch.compile`` backend (tests use ``"eager"`` to count graphs without inductor).
        dynamic: ``torch.compile``'s ``dynamic``: None = automatic (static first, sizes that then
            differ become dynamic: fewest compiles), False = one static graph per size (more
            compiles, fully specialised kernels).
        classes: the block classes compiled (names of :data:`REGION_CLASSES`; empty = all), e.g.
            only the attention blocks, whose graphs compile quickly.
    """

    enabled: bool = False
    vae: bool = True
    mode: str | None = None
    recompile_limit: int = 64
    backend: str = "inductor"
    dynamic: bool | None = None
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.recompile_limit < 1:
            raise ValueError(f"compile.recompile_limit must be >= 1, got {self.recompile_limit}")
        self.classes = tuple(self.classes)
        unknown = sorted(set(self.classes) - set(REGION_CLASSES))
        if unknown:
            raise ValueError(f"compile.classes {unknown} are not region classes; choose from {list(REGION_CLASSES)}")


def regions(model: nn.Module, vae: bool = True, classes: Sequence[str] = ()) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every block :func:`compile_regions` compiles (outermost match only).

    Args:
        model: the network.
        vae: include the VAE's blocks.
        classes: only blocks of these classes (empty = all of :data:`REGION_CLASSES`).
    """
    skip = () if vae else ("vae.",)
    wanted = set(classes or REGION_CLASSES)
    taken: list[str] = []
    for name, module in model.named_modules():
        if wanted.isdisjoint(c.__name__ for c in type(module).__mro__) or name.startswith(skip):
            continue
        if any(name.startswith(t + ".") for t in taken):  # a region inside a compiled region
            continue
        taken.append(name)
        yield name, module


def compile_regions(model: nn.Module, config: CompileConfig | None = None) -> list[str]:
    """Compile every repeated block of ``model`` in place; returns their names.

    Safe to call again (already compiled blocks are left as they are) and before or after moving
    the model to its device. Gradient checkpointing set on a block still applies inside it.
    """
    config = config or CompileConfig(enabled=True)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, config.recompile_limit)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit,
                                                            4 * config.recompile_limit)
    names, classes = [], set()
    for name, module in regions(model, vae=config.vae, classes=config.classes):
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile(mode=config.mode, backend=config.backend, dynamic=config.dynamic)
        names.append(name)
        classes.add(type(module).__name__)
    log.info("compiled %d blocks (%s)", len(names), ", ".join(sorted(classes)))
    return names


def checkpoint_regions(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Selective activation checkpointing: recompute the blocks whose name matches a pattern in backward.

    Args:
        model: the network.
        patterns: regexes (``re.search``) over block names as :func:`regions` gives them, e.g.
            ``"^unet\\.up_blocks\\.3\\."`` (the top-resolution up block's resnets, attention and
            temporal modules) or ``"motion_modules"`` (every temporal module). Blocks of the frozen
            VAE are never checkpointed (they run without gradients).

    Returns:
        The names of the checkpointed blocks.

    Raises:
        ValueError: a pattern is not a regex or matches no block (a typo would silently cost memory).
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"gradient checkpointing pattern {pattern!r} is not a valid regex: {err}") from err
    hits: dict[str, list[str]] = {p.pattern: [] for p in compiled}
    for name, module in regions(model, vae=False):
        matching = [p.pattern for p in compiled if p.search(name)]
        for pattern in matching:
            hits[pattern].append(name)
        if matching and not getattr(module, "_cyberhost_checkpointed", False):
            module.forward = _checkpointed(module.forward)
            module._cyberhost_checkpointed = True
    unused = [p for p, names in hits.items() if not names]
    if unused:
        example = next(regions(model, vae=False))[0]
        raise ValueError(f"gradient checkpointing patterns {unused} match no block (names look like {example!r})")
    return sorted({n for names in hits.values() for n in names})


_PAUSED = [False]


@contextlib.contextmanager
def checkpointing_paused() -> Iterator[None]:
    """Run selectively checkpointed blocks without recomputation (FLOP counting of model FLOPs)."""
    before, _PAUSED[0] = _PAUSED[0], True
    try:
        yield
    finally:
        _PAUSED[0] = before


def _checkpointed(forward: Callable[..., object]) -> Callable[..., object]:
    @functools.wraps(forward)
    def run(*args: object, **kwargs: object) -> object:
        if not torch.is_grad_enabled() or _PAUSED[0]:
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


__all__ = ["REGION_CLASSES", "CompileConfig", "checkpoint_regions", "checkpointing_paused", "compile_regions",
           "regions"]
