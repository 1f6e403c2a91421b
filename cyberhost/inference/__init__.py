"""Generation: reference image + audio -> talking-body video (``cyberhost generate``).

Public API: :func:`generate_video` (in-memory model, used by the CLI, the training callback and
the demo), :class:`GenerateConfig`, :class:`GenerationResult`, :func:`load_model` (checkpoint +
config -> network and training settings), :class:`InferenceSettings`, and the errors
:class:`NoPersonError`, :class:`AudioReadError`, :class:`KeypointError`, :class:`CheckpointMismatchError`.
"""

from .errors import AudioReadError, CheckpointMismatchError, GenerateError, KeypointError, NoPersonError
from .loading import InferenceSettings, load_model
from .pipeline import GenerateConfig, GenerationResult, generate_video

__all__ = [
    "AudioReadError", "CheckpointMismatchError", "GenerateConfig", "GenerateError", "GenerationResult",
    "InferenceSettings", "KeypointError", "NoPersonError", "generate_video", "load_model",
]
