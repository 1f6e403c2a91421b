"""Errors of ``cyberhost generate`` that name what the user has to fix."""

from __future__ import annotations


class GenerateError(Exception):
    """Base class: an input of ``cyberhost generate`` cannot be used (the message says why)."""


class NoPersonError(GenerateError):
    """The keypoint backend finds no person in the reference image (or the driving video)."""


class KeypointError(GenerateError):
    """The keypoint backend cannot be built (missing model files) or fails on a frame."""


class AudioReadError(GenerateError):
    """The audio file cannot be opened, has no audio stream, or is empty."""


class CheckpointMismatchError(GenerateError):
    """The checkpoint's tensors do not fit the network the config describes."""

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 mismatched: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []
