"""Which generated video is compared with which ground truth, reference image and audio.

Three ways to say it: a pair of files; two directories matched by file stem (``a.mp4`` ↔
``a.mov``); or a CSV with a header and the columns ``generated`` (required), ``ground_truth``,
``reference_image``, ``audio`` and ``name`` (optional; relative paths are relative to the
CSV's folder). Reference images and audio may also be given as a file (one pair) or a
directory matched by stem.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VideoPair", "discover_pairs", "read_pairs_csv"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus"} | VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoPair:
    """One evaluated video and what it is compared with.

    Attributes:
        name: key of the video in the outputs.
        generated: the generated video.
        ground_truth: the ground-truth video (``None``: metrics that need it are skipped).
        reference_image: the identity reference for CSIM (``None``: first ground-truth frame).
        audio: the driving audio for Sync (``None``: the generated file's audio track).
    """

    name: str
    generated: Path
    ground_truth: Path | None = None
    reference_image: Path | None = None
    audio: Path | None = None


def _by_stem(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                raise ValueError(
                    f"{folder}: two files share the name {path.stem!r} ({files[path.stem].name}, {path.name})"
                )
            files[path.stem] = path
    return files


def _match(
    stems: list[str], source: Path | None, suffixes: set[str], what: str, required: bool
) -> dict[str, Path | None]:
    if source is None:
        return dict.fromkeys(stems)
    if not source.exists():
        raise FileNotFoundError(f"{what} not found: {source}")
    if source.is_file():
        if len(stems) != 1:
            raise ValueError(
                f"{what} is one file ({source}) but there are {len(stems)} generated videos; give a directory"
            )
        return {stems[0]: source}
    found = _by_stem(source, suffixes)
    missing = [s for s in stems if s not in found]
    if missing and required:
        raise FileNotFoundError(f"{what} directory {source} has no file for: {', '.join(missing[:10])}")
    return {s: found.get(s) for s in stems}


def discover_pairs(
    generated: str | Path,
    ground_truth: str | Path | None = None,
    reference_images: str | Path | None = None,
    audio: str | Path | None = None,
) -> list[VideoPair]:
    """Pairs from a file or directory of generated videos and matching inputs.

    Args:
        generated: a video file or a directory of videos.
        ground_truth: the ground-truth file or directory (every generated video needs a match).
        reference_images: an image file or directory (stems matched; missing ones fall back).
        audio: an audio/video file or directory (stems matched; missing ones fall back).

    Raises:
        FileNotFoundError: a path does not exist, or a generated video has no ground truth.
        ValueError: a file is given where a directory is needed, or the directory is empty.
    """
    generated = Path(generated)
    if not generated.exists():
        raise FileNotFoundError(f"generated videos not found: {generated}")
    gens = {generated.stem: generated} if generated.is_file() else _by_stem(generated, VIDEO_SUFFIXES)
    if not gens:
        raise ValueError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {generated}")
    stems = list(gens)
    gt_path = Path(ground_truth) if ground_truth is not None else None
    if gt_path is not None and generated.is_dir() != gt_path.is_dir() and gt_path.exists():
        raise ValueError(
            f"give both --generated and --ground-truth as files or both as directories ({generated}, {gt_path})"
        )
    if gt_path is not None and gt_path.is_file():
        gts: dict[str, Path | None] = {stems[0]: gt_path}
    else:
        gts = _match(stems, gt_path, VIDEO_SUFFIXES, "ground truth", required=True)
    refs = _match(
        stems, Path(reference_images) if reference_images else None, IMAGE_SUFFIXES, "reference images", False
    )
    auds = _match(stems, Path(audio) if audio else None, AUDIO_SUFFIXES, "audio", False)
    return [VideoPair(s, gens[s], gts[s], refs[s], auds[s]) for s in stems]


def read_pairs_csv(path: str | Path) -> list[VideoPair]:
    """Pairs from a CSV (see the module docstring for its columns).

    Raises:
        FileNotFoundError: the CSV or a file it names does not exist.
        ValueError: the ``generated`` column is missing, or two rows have the same name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs CSV not found: {path}")
    base = path.parent
    pairs: list[VideoPair] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "generated" not in reader.fieldnames:
            raise ValueError(f"{path}: needs a header with a 'generated' column, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            files: dict[str, Path | None] = {}
            for key in ("generated", "ground_truth", "reference_image", "audio"):
                value = (row.get(key) or "").strip()
                files[key] = (base / value) if value else None
                if files[key] is not None and not files[key].is_file():  # type: ignore[union-attr]
                    raise FileNotFoundError(f"{path}:{line}: {key} file not found: {files[key]}")
            if files["generated"] is None:
                raise ValueError(f"{path}:{line}: empty 'generated'")
            name = (row.get("name") or "").strip() or files["generated"].stem  # type: ignore[union-attr]
            pairs.append(
                VideoPair(name, files["generated"], files["ground_truth"], files["reference_image"], files["audio"])
            )  # type: ignore[arg-type]
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"{path}: duplicate names {sorted({n for n in names if names.count(n) > 1})}; add a 'name' column"
        )
    if not pairs:
        raise ValueError(f"{path}: no rows")
    return pairs
