"""CyberHost network: pure single-device ``nn.Module`` code (no Lightning, no files, no distributed).

Public API: :class:`CyberHostConfig` + ``SIZES`` (size registry),
:class:`CyberHost` (``encode_reference``, ``encode_audio``, ``forward``, ``encode_images``,
``decode_latents``, ``trainable_parameters``, ``enable_gradient_checkpointing``, ``load_stage1``),
:class:`ReferenceFeatures`, :class:`CyberHostOutput`.
"""

from .config import RCA_BLOCK_NAMES, SIZES, CyberHostConfig, SizeSpec
from .cyberhost import CyberHost, CyberHostOutput, ReferenceFeatures

__all__ = ["RCA_BLOCK_NAMES", "SIZES", "CyberHost", "CyberHostConfig", "CyberHostOutput", "ReferenceFeatures",
           "SizeSpec"]
