"""The one atomic file write: a synced temporary file in the target's folder, then ``os.replace``.

A reader sees the old file or the new one, never half of one, and a killed writer leaves only a
temporary file. Temporary files are named ``.<name>.<pid>.tmp`` beside the target: hidden from
listings, never shared by two processes, and found by ``*.tmp`` globs
(:func:`cyberhost.data.shards.remove_uncommitted` deletes a killed run's leftovers that way). Being
in the target's folder, the rename never crosses a file system (Lightning's own atomic save
writes to the system temp folder, where the final move can be a copy).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

TMP_SUFFIX = ".tmp"
"""Suffix of every temporary file this module writes."""


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_file` writes ``path`` under (``.<name>.<pid>.tmp`` beside it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


class AtomicFile:
    """A binary file written under a temporary name and renamed into place by :meth:`commit`.

    For writers that learn the final name only at the end (a shard is named after its inputs);
    otherwise use :func:`atomic_file`. As a context manager it discards the file on an exception
    and commits to ``target`` otherwise.

    Args:
        tmp: the temporary path (its folder is created; the final path must be in the same folder).
        target: final path for the context-manager use; None = given to :meth:`commit`.

    Attributes:
        file: the open binary file.
    """

    def __init__(self, tmp: str | os.PathLike, target: str | os.PathLike | None = None) -> None:
        self.tmp, self.target = Path(tmp), None if target is None else Path(target)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[bytes] = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/discard

    def commit(self, path: str | os.PathLike | None = None) -> Path:
        """Flush, fsync and close the file, then rename it to ``path`` (default: the target)."""
        final = Path(path) if path is not None else self.target
        if final is None:
            raise ValueError("commit() needs a path when the AtomicFile was opened without a target")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, final)
        finally:
            self.discard()
        return final

    def discard(self) -> None:
        """Close and delete the temporary file (the target keeps its old content)."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing through a temporary file; on success it is synced and renamed into place.

    On an exception the temporary file is removed and ``path`` keeps its old content (folders are created).
    """
    with AtomicFile(temp_path(path), path) as out:
        yield out.file


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically (:func:`atomic_file`): ``dst`` is never half a copy."""
    with open(src, "rb") as source, atomic_file(dst) as f:
        shutil.copyfileobj(source, f)


__all__ = ["TMP_SUFFIX", "AtomicFile", "atomic_copy", "atomic_file", "atomic_write_bytes", "temp_path"]
