"""CyberHost network: pure single-device ``nn.Module`` code (no Lightning, no files, no distributed).

Public API: :class:`CyberHostConfig` + ``SIZES`` (size registry),
:class:`CyberHost` (``encode_reference``, ``encode_audio``, ``forward``, ``encode_images``,
``decode_latents``, ``trainable_parameters``, ``enable_gradient_checkpointing``, ``load_stage1``),
:func:`network_parts` / :class:`Part` (the one declaration of the pretrained, stage-1 and stage-2
parts), :class:`ReferenceFeatures`, :class:`CyberHostOutput`. Building reads no file and works on
the meta device; ``cyberhost.weights`` fills a built network.
"""

from .config import RCA_BLOCK_NAMES, SIZES, CyberHostConfig, SizeSpec
from .cyberhost import CyberHost, CyberHostOutput, Part, ReferenceFeatures, network_parts, part_of

__all__ = ["RCA_BLOCK_NAMES", "SIZES", "CyberHost", "CyberHostConfig", "CyberHostOutput", "Part", "ReferenceFeatures",
           "SizeSpec", "network_parts", "part_of"]
