"""The paper's metrics with a pinned protocol (``cyberhost evaluate``) and shared video/audio IO.

See :mod:`cyberhost.evaluation.evaluate` for the runner and the per-metric modules for the protocol.
"""

from cyberhost.evaluation.io import read_audio, read_video, write_video

__all__ = ["read_audio", "read_video", "write_video"]
