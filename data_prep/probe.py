"""Step 1a: probe and validate an input file; every refusal is a :class:`SkipInput` with a precise reason."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cyberhost.media.video import MediaError, MediaInfo, probe_media
from data_prep.config import PrepConfig


class SkipInput(Exception):
    """An input that cannot give clips; the message is the report's reason."""


def probe(path: Path, cfg: PrepConfig) -> MediaInfo:
    """Open a file and check it is a video this pipeline can use.

    Args:
        path: the input file.
        cfg: thresholds (``max_input_pixels``, ``filters.require_audio``).

    Returns:
        What :func:`cyberhost.media.video.probe_media` found.

    Raises:
        SkipInput: not a regular file (dangling link, directory, FIFO, device), empty, unreadable,
            not media, no streams (damaged header), no video stream, no audio (when required), or
            too many pixels.
    """
    size = _regular_file_size(path)
    if size == 0:
        raise SkipInput("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise SkipInput("unreadable: permission denied")
    try:
        info = probe_media(path)
    except MediaError as err:
        raise SkipInput(str(err)) from err
    width, height = info.width, info.height
    if width <= 0 or height <= 0:
        raise SkipInput(f"video stream has no frame size ({info.codec})")
    if width * height > cfg.max_input_pixels:
        raise SkipInput(f"resolution {width}x{height} exceeds max_input_pixels={cfg.max_input_pixels}")
    if cfg.filters.require_audio and not info.has_audio:
        raise SkipInput("no audio track (filters.require_audio is true)")
    return info


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _regular_file_size(path: Path) -> int:
    """Size of ``path``, refusing anything that is not a regular file before it is opened.

    Opening a FIFO for reading would block until a writer appears, and a directory or device
    named ``*.mp4`` is not a video: both get a precise reason instead of a hang or a decoder error.
    """
    try:
        st = path.stat()
    except OSError as err:
        if path.is_symlink():
            raise SkipInput(f"unreadable: dangling symbolic link (target {os.readlink(path)!r} does not exist)") from err
        raise SkipInput(f"unreadable: {err.strerror or err}") from err
    if not stat.S_ISREG(st.st_mode):
        raise SkipInput(f"unreadable: not a regular file ({file_kind(st.st_mode)})")
    return st.st_size


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (``a FIFO``, ``a directory``...), from its ``st_mode``."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")
