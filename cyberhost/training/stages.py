"""The two training stages of CyberHost (Sec. 4.1) over :class:`~cyberhost.training.module.CyberHostModule`.

* Stage 1 trains on (reference, target) image pairs: Reference Net, Pose Encoders and the UNet's
  base modules. Loss: Eq. 6's reweighted diffusion term (no RCA exists yet).
* Stage 2 trains on 12-frame clips with 4 motion frames and audio: temporal layers, audio
  attention, RCA, identity encoders, clarity embedding and heatmap heads; it starts from the
  stage-1 weights named by ``stage1_checkpoint``. Loss: all of Eq. 6 plus the RCA mask BCE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from cyberhost import weights
from cyberhost.data.schema import HANDS
from cyberhost.diffusion import (
    LossConfig,
    SamplerConfig,
    ScheduleConfig,
    box_masks,
    keypoint_region_mask,
)
from cyberhost.models import CyberHostConfig, CyberHostOutput
from cyberhost.models.blocks import CompileConfig
from cyberhost.models.cyberhost import Part
from cyberhost.training.module import CyberHostModule, OptimConfig, ParamGroups, to_pixels

RANDOM_STAGE1 = "random"
"""``stage1_checkpoint`` value that starts stage 2 from random stage-1 weights (tests, benchmarks)."""


def _latent_size(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] // 8, size[1] // 8


def not_in_stage1(part: Part) -> bool:
    """Parts a stage-1 checkpoint may lack: what stage 2 adds, and frozen pretrained parts (an export leaves them out)."""
    return part.stage == 2 or not part.trained


class Stage1Module(CyberHostModule):
    """Stage 1: image pairs; reference net, pose encoders and the 2D UNet train."""

    stage = 1

    def loss_targets(self, batch: dict[str, Tensor], out: CyberHostOutput, size: tuple[int, int]) -> dict[str, Any]:
        """Face/hand keypoint mask M of Eq. 6 at latent resolution."""
        px = to_pixels(batch, size)
        return {"region_mask": keypoint_region_mask(px["keypoints"], batch["keypoints_valid"], size, _latent_size(size))}


class Stage2Module(CyberHostModule):
    """Stage 2: clips with motion frames and audio; starts from stage-1 weights.

    Args:
        stage1_checkpoint: stage-1 ``last.ckpt`` or exported ``.safetensors`` (required; ``"random"``
            starts from random weights, for tests and benchmarks only).
        model: network configuration (``stage: 2``).
        optim: optimiser settings.
        params: explicit trainable/frozen parameter patterns.
        schedule: noise schedule.
        loss: loss weights.
        sampler: sampler of validation samples.
        gradient_checkpointing: recompute activations in backward (``true``, or block-name regexes).
        seed: seed of timesteps and noise.
        channels_last: channels-last conv weights (see :class:`CyberHostModule`).
        compile: regional compilation of the repeated blocks (see :class:`CyberHostModule`).
        frozen_bf16: frozen weights stored in bf16 (see :class:`CyberHostModule`).
    """

    stage = 2

    def __init__(
        self,
        stage1_checkpoint: str,
        model: CyberHostConfig | None = None,
        optim: OptimConfig | None = None,
        params: ParamGroups | None = None,
        schedule: ScheduleConfig | None = None,
        loss: LossConfig | None = None,
        sampler: SamplerConfig | None = None,
        gradient_checkpointing: bool | list[str] = False,
        seed: int = 0,
        channels_last: bool = False,
        compile: CompileConfig | None = None,
        frozen_bf16: bool = False,
    ) -> None:
        model = model or CyberHostConfig(stage=2)  # recorded as a hyper-parameter: generate reads it
        self.stage1_checkpoint = stage1_checkpoint  # before the base builds and loads (initial_checkpoint reads it)
        super().__init__(model, optim, params, schedule, loss, sampler, gradient_checkpointing, seed, channels_last,
                         compile, frozen_bf16)

    def initial_checkpoint(self) -> tuple[str | None, str, Callable[[Part], bool] | None]:
        """The stage-1 weights (none for ``"random"``); what stage 2 adds and the frozen parts may be absent."""
        path = None if self.stage1_checkpoint == RANDOM_STAGE1 else self.stage1_checkpoint
        return path, "model.init_args.stage1_checkpoint", not_in_stage1

    def load_stage1(self, path: str) -> weights.LoadPlan:
        """Load stage-1 weights (pretrained folders first, for what the file lacks); the rest keeps its values.

        Raises:
            FileNotFoundError: the file is missing (naming ``model.stage1_checkpoint``).
            ValueError: the file is not a stage-1 checkpoint of this network size (names the keys).
        """
        try:
            return weights.load_network(self.model, path, what="model.init_args.stage1_checkpoint",
                                        allow_missing=not_in_stage1, seed=self.seed)
        except weights.WeightsMismatchError as err:
            raise ValueError(f"stage1_checkpoint {path}: {err} (another model.size or stage?)") from err

    def loss_targets(self, batch: dict[str, Tensor], out: CyberHostOutput, size: tuple[int, int]) -> dict[str, Any]:
        """Region mask M, hand heatmaps and face/hand box masks at the largest RCA resolution."""
        px = to_pixels(batch, size)
        valid = batch["keypoints_valid"]
        targets: dict[str, Any] = {"region_mask": keypoint_region_mask(px["keypoints"], valid, size, _latent_size(size))}
        if out.heatmaps:  # targets are drawn per RCA resolution inside the loss
            targets.update(heatmaps=out.heatmaps, hand_keypoints=px["keypoints"][..., HANDS, :],
                           hand_keypoints_valid=valid[..., HANDS], image_size=size)
        if out.face_masks:
            hw = max((m.shape[-2:] for m in out.face_masks), key=lambda s: s[0] * s[1])
            targets["face_masks"] = out.face_masks
            targets["face_box_mask"] = box_masks(px["face_box"].unsqueeze(-2), batch["face_box_valid"].unsqueeze(-1),
                                                 size, tuple(hw))
        if out.hand_masks:
            hw = max((m.shape[-2:] for m in out.hand_masks), key=lambda s: s[0] * s[1])
            targets["hand_masks"] = out.hand_masks
            targets["hand_box_mask"] = box_masks(px["hand_boxes"], batch["hand_boxes_valid"], size, tuple(hw))
        return targets
