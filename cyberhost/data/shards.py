"""WebDataset tar shards of clips: atomic writer, committed-shard bookkeeping, reader and decoder.

One WebDataset sample is one clip of :mod:`cyberhost.data.schema`. Its tar members are
``<key>.meta.json`` (the scalar metadata plus ``frame_encoding``), one ``<key>.<name>.npy`` per
array field except the frames, and the frames as either one JPEG per frame
(``<key>.f0000.jpg``, ``<key>.f0001.jpg``, ...) or one H.264 segment (``<key>.frames.mp4``).

Commit protocol (what makes a run resumable and a kill harmless): a writer fills a temporary
``open-<shard>-<worker>-<pid>.tar.tmp``, then renames it to ``<name>.tar`` and afterwards writes the
*commit record* ``<name>.json`` (also via a temporary name; both through :mod:`cyberhost.media.files`)
listing the tar and the report entry of every input whose clips it holds. An input is finished
exactly when a commit record names it; a tar without a record is an orphan of a killed run, never
read and removed by :func:`remove_uncommitted`. An input never spans two shards. Shard names carry
the shard index, the worker number and a hash of their first input, so writers on many machines
and processes never collide.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cyberhost.data.schema import AUDIO_SAMPLE_RATE, CLIP_FIELDS, META_FIELDS, validate_clip
from cyberhost.media.files import TMP_SUFFIX, AtomicFile, atomic_write_bytes
from cyberhost.media.video import decode_video_bytes
from cyberhost.media.writer import encode_video_bytes

FRAME_ENCODINGS = ("jpg", "mp4")
"""``jpg``: one JPEG per frame (random access); ``mp4``: one H.264 segment per clip (smaller)."""
ARRAY_FIELDS = tuple(name for name in CLIP_FIELDS if name != "frames")
"""Fields stored as ``.npy`` members."""


# ----------------------------------------------------------------------------- frame codecs


def encode_frames(frames: np.ndarray, encoding: str, quality: int = 90, fps: float = 25.0) -> dict[str, bytes]:
    """Encode ``(F, H, W, 3)`` uint8 RGB frames into tar members.

    Args:
        frames: the clip's frames.
        encoding: ``"jpg"`` or ``"mp4"``.
        quality: JPEG quality (0-100); for mp4 it maps to the x264 CRF ``51 * (100 - quality) / 100``.
        fps: frame rate written into the mp4 stream.

    Returns:
        Member extension -> bytes.
    """
    if encoding == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        out = {}
        for i, frame in enumerate(frames):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise ValueError(f"JPEG encoding failed for frame {i}")
            out[f"f{i:04d}.jpg"] = buf.tobytes()
        return out
    if encoding == "mp4":
        crf = round(51 * (100 - quality) / 100)
        return {"frames.mp4": encode_video_bytes(frames, fps, crf, {"preset": "veryfast", "g": "8", "threads": "1"})}
    raise ValueError(f"frame encoding must be one of {FRAME_ENCODINGS}, got {encoding!r}")


def decode_frames(sample: dict[str, Any], indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode some or all frames of a raw sample.

    Args:
        sample: raw WebDataset sample (member extension -> bytes).
        indices: frame indices to decode (any order); ``None`` for all.

    Returns:
        ``(len(indices), H, W, 3)`` uint8 RGB.
    """
    if "frames.mp4" in sample:
        return decode_video_bytes(sample["frames.mp4"], indices)
    names = sorted(k for k in sample if k.startswith("f") and k.endswith(".jpg"))
    if indices is not None:
        names = [names[i] for i in indices]
    if not names:
        raise ValueError(f"sample {sample.get('__key__', '?')!r} has no frames")
    out = []
    for name in names:
        img = cv2.imdecode(np.frombuffer(sample[name], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"sample {sample.get('__key__', '?')!r}: {name} is not a JPEG")
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(out)


# ----------------------------------------------------------------------------- sample codec


def encode_clip(clip: dict[str, Any], encoding: str = "jpg", quality: int = 90) -> dict[str, Any]:
    """Turn a decoded clip into a raw WebDataset sample (``__key__`` plus member bytes).

    Args:
        clip: a clip that passes :func:`~cyberhost.data.schema.validate_clip`.
        encoding: frame encoding, one of :data:`FRAME_ENCODINGS`.
        quality: JPEG quality / mp4 quality (see :func:`encode_frames`).

    Returns:
        The raw sample.
    """
    validate_clip(clip)
    meta = {name: _plain(clip[name]) for name in META_FIELDS}
    meta["frame_encoding"] = encoding
    sample: dict[str, Any] = {"__key__": clip["key"], "meta.json": json.dumps(meta, sort_keys=True).encode()}
    for name in ARRAY_FIELDS:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(clip[name]), allow_pickle=False)
        sample[f"{name}.npy"] = buf.getvalue()
    sample.update(encode_frames(clip["frames"], encoding, quality, float(clip["fps"])))
    return sample


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def decode_clip(sample: dict[str, Any], window: tuple[int, int] | None = None) -> dict[str, Any]:
    """Decode a raw WebDataset sample into a clip with the schema's keys (use with ``.map``).

    Args:
        sample: raw sample, member extension -> bytes (``meta.json`` may already be a dict
            when a WebDataset decoder ran first).
        window: ``(start, length)`` to decode only that run of frames; per-frame arrays and the
            audio are cut to match, whole-clip fields (``movement_range``) are kept.

    Returns:
        The decoded clip, validated against the schema.
    """
    meta = sample["meta.json"]
    clip: dict[str, Any] = dict(json.loads(meta) if isinstance(meta, bytes | str) else meta)
    for name in ARRAY_FIELDS:
        value = sample[f"{name}.npy"]
        clip[name] = np.load(io.BytesIO(value), allow_pickle=False) if isinstance(value, bytes) else value
    indices = None
    if window is not None:
        start, length = window
        if start < 0 or length < 1 or start + length > clip["num_frames"]:
            raise ValueError(f"window {window} outside the {clip['num_frames']} frames of {clip['key']!r}")
        indices = range(start, start + length)
        _cut(clip, start, length)
    clip["frames"] = decode_frames(sample, indices)
    validate_clip(clip)
    return clip


def _cut(clip: dict[str, Any], start: int, length: int) -> None:
    for name, spec in CLIP_FIELDS.items():
        if spec.shape and spec.shape[0] == "F" and name != "frames":
            clip[name] = clip[name][start : start + length]
    fps = float(clip["fps"])
    a0 = round(start / fps * AUDIO_SAMPLE_RATE)
    clip["audio"] = clip["audio"][a0 : a0 + round(length / fps * AUDIO_SAMPLE_RATE)]
    clip["start"] = clip["start"] + start / fps
    clip["end"] = clip["start"] + length / fps
    clip["num_frames"] = length


# ----------------------------------------------------------------------------- writer


class ClipShardWriter:
    """Writes clips into WebDataset tar shards, committing them atomically per input.

    Use as a context manager. For every input: :meth:`write` its clips, then :meth:`finish_input`
    with its report entry. A shard is committed (renamed, then its commit record written) when it
    exceeds ``max_shard_bytes`` at an input boundary, and on :meth:`close`.

    Args:
        directory: folder of the shards and commit records.
        shard_index: index of this machine's part of the inputs (goes into the names).
        worker: number of this process on the machine (goes into the names).
        max_shard_bytes: roll to a new shard once a shard is larger than this.
        frame_encoding: ``"jpg"`` or ``"mp4"``.
        quality: frame quality (see :func:`encode_frames`).
        prefix: shard name prefix.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        shard_index: int = 0,
        worker: int = 0,
        max_shard_bytes: int = 512 << 20,
        frame_encoding: str = "jpg",
        quality: int = 90,
        prefix: str = "clips",
    ) -> None:
        if frame_encoding not in FRAME_ENCODINGS:
            raise ValueError(f"frame_encoding must be one of {FRAME_ENCODINGS}, got {frame_encoding!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_index, self.worker, self.prefix = shard_index, worker, prefix
        self.max_shard_bytes, self.frame_encoding, self.quality = max_shard_bytes, frame_encoding, quality
        self._tar: tarfile.TarFile | None = None
        self._file: AtomicFile | None = None  # the open shard, under its temporary name
        self._bytes = 0
        self._keys: list[str] = []  # clips of the input in progress
        self._inputs: list[dict[str, Any]] = []  # finished inputs of the open shard
        self._num_clips = 0
        self.committed: list[str] = []

    @property
    def open_input_clips(self) -> int:
        """Clips written since the last :meth:`finish_input` (those of the input in progress)."""
        return len(self._keys)

    def __enter__(self) -> ClipShardWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    def write(self, clip: dict[str, Any]) -> int:
        """Append one clip to the open shard.

        Args:
            clip: a decoded clip (validated here).

        Returns:
            Bytes written.
        """
        sample = encode_clip(clip, self.frame_encoding, self.quality)
        if self._tar is None:
            self._file = AtomicFile(self.directory / f"open-{self.shard_index:05d}-{self.worker:03d}-{os.getpid()}.tar{TMP_SUFFIX}")
            self._tar = tarfile.open(fileobj=self._file.file, mode="w", format=tarfile.USTAR_FORMAT)
        size = 0
        key = sample.pop("__key__")
        for ext, data in sample.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
            size += len(data)
        self._bytes += size
        self._keys.append(key)
        self._num_clips += 1
        return size

    def finish_input(self, entry: dict[str, Any]) -> list[str] | None:
        """Record the report entry of the input whose clips were written since the last call.

        Args:
            entry: the input's report entry (``file``, ``status``, ``reason``, ``clips``).

        Returns:
            Shards committed by this call (a list), or ``None`` when the shard stays open.
        """
        self._inputs.append({**entry, "keys": self._keys})
        self._keys = []
        if self._bytes >= self.max_shard_bytes:
            return self.flush()
        return None

    def flush(self) -> list[str]:
        """Commit the open shard and the finished inputs recorded with it.

        Returns:
            Names of the commit records written (empty when there was nothing to commit).
        """
        if self._keys:
            raise RuntimeError("flush() between write() and finish_input(): an input may not span shards")
        if not self._inputs:
            return []
        first = self._inputs[0]["file"]
        digest = hashlib.sha1(f"{first}\0{len(self._inputs)}".encode()).hexdigest()[:12]
        name = f"{self.prefix}-{self.shard_index:05d}-{self.worker:03d}-{digest}"
        tar_name = None
        if self._tar is not None:
            self._tar.close()
            tar_name = f"{name}.tar"
            self._file.commit(self.directory / tar_name)
        record = {"shard": tar_name, "num_clips": self._num_clips, "bytes": self._bytes, "inputs": self._inputs}
        atomic_write_bytes(self.directory / f"{name}.json", json.dumps(record, indent=1).encode())
        self._tar, self._file, self._bytes, self._inputs, self._num_clips = None, None, 0, [], 0
        self.committed.append(f"{name}.json")
        return [f"{name}.json"]

    def close(self) -> None:
        """Commit the open shard.

        Raises:
            RuntimeError: clips were written after the last :meth:`finish_input`.
        """
        self.flush()

    def abandon(self) -> None:
        """Drop the open shard and its inputs uncommitted (their inputs are redone by a rerun)."""
        if self._tar is not None:
            self._tar.close()
            self._file.discard()
        self._tar, self._file, self._bytes, self._inputs, self._keys, self._num_clips = None, None, 0, [], [], 0


# ----------------------------------------------------------------------------- bookkeeping


def commit_records(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Commit records of a shard folder (recursively), each with ``record_path`` added.

    Args:
        directory: a folder written by :class:`ClipShardWriter` (or a parent of such folders).

    Returns:
        The records, sorted by path.
    """
    out = []
    for path in sorted(Path(directory).rglob("*.json")):
        if path.name in ("manifest.json", "report.json") or path.name.startswith(("manifest", "report")):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "inputs" in record and "shard" in record:
            record["record_path"] = str(path)
            out.append(record)
    return out


def remove_uncommitted(directory: str | os.PathLike, shard_index: int | None = None) -> list[Path]:
    """Delete temporary files and tars that no commit record names (leftovers of a killed run).

    Args:
        directory: the shard folder.
        shard_index: only touch files of this shard index (other machines may be writing into
            the same folder); ``None`` for all.

    Returns:
        The deleted paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    named = {Path(r["record_path"]).parent / r["shard"] for r in commit_records(directory) if r["shard"]}
    mine = "*" if shard_index is None else f"*-{shard_index:05d}-*"
    gone = list(directory.rglob(f"{mine}{TMP_SUFFIX}"))
    gone += [p for p in directory.rglob(f"{mine}.tar") if p not in named]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def list_shards(path: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Shard files to read.

    Args:
        path: a tar, a list of tars, or a folder. For a folder the committed shards (those named
            by a commit record, at any depth) are read, so the output folders of several machines
            or a folder holding a killed run's orphans read correctly; a folder of plain tars
            without records reads all ``*.tar``.

    Returns:
        Shard paths, sorted.
    """
    if not isinstance(path, str | os.PathLike):
        return [Path(p) for p in path]
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no shard or folder at {path}")
    records = commit_records(path)
    if records:
        return sorted(Path(r["record_path"]).parent / r["shard"] for r in records if r["shard"])
    return sorted(path.rglob("*.tar"))


def iter_raw_samples(shard: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Raw WebDataset samples of one tar (member extension -> bytes, plus ``__key__``/``__url__``).

    Args:
        shard: tar path.

    Yields:
        One dict per sample, members grouped by key as WebDataset groups them.
    """
    current: dict[str, Any] | None = None
    with tarfile.open(shard, "r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": str(shard)}
            current[ext] = tar.extractfile(info).read()
    if current is not None:
        yield current


def iter_clips(path: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[dict[str, Any]]:
    """Decoded clips of a dataset, in shard order.

    Args:
        path: output folder of ``data_prep``, a shard, or a list of shards (see :func:`list_shards`).

    Yields:
        One dict per clip with the keys of :mod:`cyberhost.data.schema`, validated.
    """
    for shard in list_shards(path):
        for sample in iter_raw_samples(shard):
            yield decode_clip(sample)


def clip_audio_samples(num_frames: int, fps: float) -> int:
    """Audio samples that belong to ``num_frames`` frames at ``fps`` (the schema's rule)."""
    return round(num_frames / fps * AUDIO_SAMPLE_RATE)


__all__ = [
    "ClipShardWriter",
    "FRAME_ENCODINGS",
    "clip_audio_samples",
    "commit_records",
    "decode_clip",
    "decode_frames",
    "encode_clip",
    "encode_frames",
    "iter_clips",
    "iter_raw_samples",
    "list_shards",
    "remove_uncommitted",
]
