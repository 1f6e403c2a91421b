"""Streaming DataModules of CyberHost's two training stages over WebDataset clip shards.

Pipeline of one loader worker (``g`` = its global number over ranks and workers):

1. shard list (local folder, tar list, or a URL/brace pattern) -> this worker's part: whole
   shards when there are at least as many shards as workers, else every ``G``-th sample;
2. raw samples (bytes) -> shuffle buffer -> usable clips (by metadata only) -> bucket batcher
   (by metadata only: aspect ratio -> bucket);
3. only then decode + transform each sample of a full batch and stack.

The stream never ends: pass ``p = 0, 1, ...`` reshuffles with ``(seed, p)``. An *epoch* is a
fixed number of batches (``samples_per_epoch``), so DDP ranks always agree on its length.
Randomness of a sample is seeded by ``(seed, pass, clip key)``.

**Resume.** The position of every worker stream is ``(pass, batches of that pass)``; since
batching uses metadata only, skipping ``k`` batches costs reading their bytes, not decoding
them. :class:`ResumableLoader` records the position of each batch it hands out and implements
``state_dict``/``load_state_dict``, which Lightning stores in the checkpoint (``loops.fit_loop
.state_dict.combined_loader``) and restores before iterating, so a resumed run sees exactly the
batches an uninterrupted run would have seen (tested). Positions are per worker: resume with the
same ``num_workers`` (a different number restarts the streams with a warning). With several
ranks, ``state_dict`` gathers every rank's positions (``all_gather_object``; Lightning calls it on
all ranks when it saves) and each rank restores its own, so uneven shards do not shift the data of
the other ranks; resume with the same number of ranks (else the streams restart, with a warning).
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cyberhost.data.buckets import BucketBatcher, BucketConfig, nearest_bucket
from cyberhost.data.conditions import make_stage1_sample, make_stage2_sample
from cyberhost.data.shards import commit_records, iter_raw_samples, list_shards
from cyberhost.data.transforms import TransformConfig, clip_usable, read_meta

log = logging.getLogger(__name__)

_MAKERS = {1: make_stage1_sample, 2: make_stage2_sample}
_INFO_KEYS = ("_worker", "_pass", "_count")
"""Bookkeeping entries a worker adds to each batch; :class:`ResumableLoader` removes them."""


# ----------------------------------------------------------------------------- shard sources


def is_remote(spec: str | list[str]) -> bool:
    """Whether a shard spec names URLs (``scheme://`` or ``pipe:``) rather than local files."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    return any("://" in str(s) or str(s).startswith("pipe:") for s in specs)


def resolve_shards(spec: str | list[str]) -> list[str]:
    """Shard locations from a folder, a tar, a list, or a URL / brace pattern (``shard-{000..009}.tar``).

    Raises:
        FileNotFoundError: a local folder without shards, or a local path that does not exist.
    """
    if isinstance(spec, list | tuple):
        return [str(s) for s in spec]
    if is_remote(spec):
        from webdataset.shardlists import expand_urls

        return expand_urls(spec)
    if "{" in spec or "::" in spec:
        from webdataset.shardlists import expand_urls

        out = expand_urls(spec)
        missing = [u for u in out if not Path(u).exists()]
        if missing:
            raise FileNotFoundError(f"shards {missing[:3]} of pattern {spec!r} do not exist")
        return out
    shards = [str(p) for p in list_shards(spec)]
    if not shards:
        raise FileNotFoundError(f"no .tar shards under {spec!r}: run `make prepare-data` or fix the path")
    return shards


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard: a local tar, or any URL webdataset's ``gopen`` reads."""
    if os.path.exists(url):
        yield from iter_raw_samples(url)
        return
    from webdataset.tariterators import tarfile_samples

    yield from tarfile_samples([{"url": url}])


def count_clips(shards: list[str]) -> int:
    """Clips in local shards: from their commit records when present, else by listing tar members."""
    local = [s for s in shards if os.path.exists(s)]
    if len(local) != len(shards):
        raise ValueError("samples_per_epoch must be set for remote shards (their size is unknown here)")
    by_tar = {}
    for folder in {str(Path(s).parent) for s in shards}:
        for rec in commit_records(folder):
            if rec.get("shard"):
                by_tar[str(Path(rec["record_path"]).parent / rec["shard"])] = int(rec["num_clips"])
    total = 0
    for s in shards:
        if s in by_tar:
            total += by_tar[s]
        else:
            with tarfile.open(s) as tar:
                total += sum(1 for m in tar.getmembers() if m.name.endswith(".meta.json"))
    return total


# ----------------------------------------------------------------------------- the stream


@dataclass
class StreamConfig:
    """How one stream reads and batches clips.

    Attributes:
        stage: 1 (frame pairs) or 2 (clips).
        batch_size: samples per batch (per rank).
        seed: base seed of shuffling and sample randomness.
        shuffle_buffer: raw samples held for shuffling (0: no shuffling).
        train: random views and an endless, reshuffled stream; else deterministic views, one pass.
        buckets: resolution buckets.
        transform: sample settings.
    """

    stage: int
    batch_size: int
    seed: int = 0
    shuffle_buffer: int = 256
    train: bool = True
    buckets: BucketConfig = field(default_factory=BucketConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)


def _shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffered shuffle: keep ``size`` items, emit a random one for each new one."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples of one bucket into a batch."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


class ClipStream(IterableDataset):
    """Batches of one stage from WebDataset shards, split by rank and worker (see the module doc).

    Args:
        shards: shard locations (see :func:`resolve_shards`).
        config: stream settings.
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(self, shards: list[str], config: StreamConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not shards:
            raise ValueError("no shards to read")
        self.shards, self.config, self.rank, self.world_size = list(shards), config, rank, world_size
        self.buckets = config.buckets.buckets()
        self.start: dict[int, tuple[int, int]] = {}
        """Worker -> (pass, batches of that pass already consumed); set by the loader before iterating."""

    def _worker(self) -> tuple[int, int, int]:
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        return wid, self.rank * nw + wid, self.world_size * nw

    def _raw(self, p: int, g: int, total: int) -> Iterator[dict[str, Any]]:
        shards = list(self.shards)
        if self.config.train:
            np.random.default_rng([self.config.seed, p]).shuffle(shards)
        if len(shards) >= total:
            for url in shards[g::total]:
                yield from iter_shard(url)
            return
        i = 0
        for url in shards:
            for sample in iter_shard(url):
                if i % total == g:
                    yield sample
                i += 1

    def _bucketed(self, p: int, g: int, total: int) -> Iterator[list[dict[str, Any]]]:
        cfg = self.config
        raw = self._raw(p, g, total)
        if cfg.train and cfg.shuffle_buffer > 0:
            raw = _shuffle(raw, cfg.shuffle_buffer, np.random.default_rng([cfg.seed, p, g, 1]))
        batcher = BucketBatcher(cfg.batch_size)

        def keyed() -> Iterator[tuple[int, tuple[dict[str, Any], dict[str, Any]]]]:
            for sample in raw:
                meta = read_meta(sample)
                if clip_usable(meta, cfg.stage, cfg.transform):
                    yield nearest_bucket(int(meta["height"]), int(meta["width"]), self.buckets), (sample, meta)

        for _, items in batcher.feed(keyed()):
            yield [s for s, _ in items]
        if not cfg.train:  # the validation pass keeps its partial buckets
            for items in batcher.pending.values():
                if items:
                    yield [s for s, _ in items]

    def _decode(self, batch: list[dict[str, Any]], p: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        meta = read_meta(batch[0])
        bucket = self.buckets[nearest_bucket(int(meta["height"]), int(meta["width"]), self.buckets)]
        out = []
        for sample in batch:
            rng = None
            if cfg.train:
                rng = np.random.default_rng([cfg.seed, p, zlib.crc32(sample["__key__"].encode())])
            out.append(_MAKERS[cfg.stage](sample, bucket, cfg.transform, rng))
        return collate(out)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        wid, g, total = self._worker()
        p, skip = self.start.get(wid, (0, 0))
        while True:
            count = 0
            for raw in self._bucketed(p, g, total):
                count += 1
                if count <= skip:
                    continue
                batch = self._decode(raw, p)
                batch.update(_worker=torch.tensor(wid), _pass=torch.tensor(p), _count=torch.tensor(count))
                yield batch
            if not self.config.train:
                return
            if count == 0:
                raise RuntimeError(
                    f"worker {g} of {total} got no full batch from {len(self.shards)} shard(s): use fewer workers, "
                    f"a smaller batch_size ({self.config.batch_size}) or more clips"
                )
            p, skip = p + 1, 0


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ClipStream` with a fixed epoch length and a resumable position.

    Args:
        stream: the dataset.
        batches_per_epoch: batches one epoch hands out (training); None = until the stream ends.
        **kwargs: DataLoader options (``num_workers``, ``pin_memory``, ...).
    """

    def __init__(self, stream: ClipStream, batches_per_epoch: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("persistent_workers", False)  # workers must restart from the recorded position
        super().__init__(stream, batch_size=None, **kwargs)
        self.batches_per_epoch = batches_per_epoch
        self.positions: dict[int, tuple[int, int]] = {}
        self.in_epoch = 0
        self.next_worker = 0

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("this loader has no fixed length")
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[override]
        limit = self.batches_per_epoch
        if limit is not None and self.in_epoch >= limit:
            self.in_epoch = 0
        self.dataset.start = dict(self.positions)
        for batch in self._in_worker_order(super().__iter__()):
            if limit is not None and self.in_epoch >= limit:
                return
            info = [int(batch.pop(k)) for k in _INFO_KEYS]
            self.positions[info[0]] = (info[1], info[2])
            self.next_worker = (info[0] + 1) % max(1, self.num_workers)
            self.in_epoch += 1
            yield batch

    def _in_worker_order(self, it: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Batches round-robin over workers starting at ``next_worker``.

        PyTorch always starts a fresh iterator at worker 0; after a resume the next batch may be
        due from another worker, so batches that arrive early wait in a per-worker queue.
        """
        queues: dict[int, list[dict[str, torch.Tensor]]] = {}
        while True:
            want = self.next_worker
            while not queues.get(want):
                try:
                    batch = next(it)
                except StopIteration:
                    for q in queues.values():  # a finite stream ended: hand out what is left
                        yield from q
                    return
                queues.setdefault(int(batch["_worker"]), []).append(batch)
            yield queues[want].pop(0)

    def local_state(self) -> dict[str, Any]:
        """Position of this rank's worker streams and of the epoch."""
        return {
            "positions": {int(k): list(v) for k, v in self.positions.items()},
            "in_epoch": self.in_epoch,
            "next_worker": self.next_worker,
            "num_workers": self.num_workers,
        }

    def _rank(self) -> tuple[int, int]:
        return int(getattr(self.dataset, "rank", 0)), int(getattr(self.dataset, "world_size", 1))

    def state_dict(self) -> dict[str, Any]:
        """Positions of every rank (saved in Lightning checkpoints): this rank's at the top, all in ``ranks``.

        A collective under ``torch.distributed`` with several ranks: every rank must call it (Lightning
        builds the checkpoint on all ranks).
        """
        state = self.local_state()
        rank, world = self._rank()
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, {"rank": rank, **state})
            state["ranks"] = sorted(gathered, key=lambda s: s["rank"])
            state["world_size"] = world
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (this rank's entry of ``ranks`` when several ranks saved)."""
        rank, world = self._rank()
        if "ranks" in state:
            mine = [s for s in state["ranks"] if int(s["rank"]) == rank]
            if int(state.get("world_size", len(state["ranks"]))) != world or not mine:
                log.warning("data position saved by %s ranks, now %s: streams restart from their beginning",
                            state.get("world_size", len(state["ranks"])), world)
                self.in_epoch = int(state.get("in_epoch", 0))
                self.positions, self.next_worker = {}, 0
                return
            state = mine[0]
        elif world > 1 and state.get("positions"):
            log.warning("data position saved without per-rank entries (older checkpoint): rank %d continues from "
                        "rank 0's position", rank)
        self.in_epoch = int(state.get("in_epoch", 0))
        if int(state.get("num_workers", self.num_workers)) != self.num_workers:
            log.warning("data position saved with %s workers, now %s: streams restart from their beginning",
                        state.get("num_workers"), self.num_workers)
            self.positions, self.next_worker = {}, 0
            return
        self.next_worker = int(state.get("next_worker", 0))
        self.positions = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("positions", {}).items()}


# ----------------------------------------------------------------------------- DataModules


class ClipDataModule(L.LightningDataModule):
    """Common part of the two stages' DataModules.

    Args:
        train_shards: training shards: a ``data_prep`` output folder, a tar, or a URL/brace pattern.
        val_shards: validation shards (same forms); None = the first clips of ``train_shards``.
        batch_size: samples per batch and rank.
        val_batch_size: validation samples per batch (None = ``batch_size``).
        val_batches: validation batches per rank (fixed so every rank runs the same number).
        num_workers: loader worker processes per rank.
        shuffle_buffer: raw clips held for shuffling per worker (memory: about this many encoded clips
            per worker; a real clip is a few MB). Shards are also shuffled, per pass.
        seed: seed of shuffling and of all sample randomness.
        samples_per_epoch: samples of one epoch over all ranks; None = the clips counted in local shards
            (required for URL / ``pipe:`` shards, whose size is unknown).
        pin_memory: pin batches for faster host-to-GPU copies.
        prefetch_factor: batches each worker prepares ahead.
        buckets: training resolutions.
        transform: sample settings.
    """

    stage: int = 1

    def __init__(
        self,
        train_shards: str | list[str] = "data/sample_clips",
        val_shards: str | list[str] | None = None,
        batch_size: int = 12,
        val_batch_size: int | None = None,
        val_batches: int = 1,
        num_workers: int = 4,
        shuffle_buffer: int = 256,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        buckets: BucketConfig | None = None,
        transform: TransformConfig | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batches < 0 or num_workers < 0:
            raise ValueError("batch_size must be >= 1, val_batches and num_workers >= 0")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if samples_per_epoch is None and is_remote(train_shards):
            raise ValueError(
                f"data.init_args.samples_per_epoch must be set for URL shards ({train_shards!r}): their clip count "
                "is unknown here (the manifest.json of the data_prep run gives it)"
            )
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size, self.val_batch_size, self.val_batches = batch_size, val_batch_size or batch_size, val_batches
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.samples_per_epoch, self.pin_memory, self.prefetch_factor = samples_per_epoch, pin_memory, prefetch_factor
        self.buckets = buckets or BucketConfig()
        self.transform = transform or TransformConfig()
        self._train_loader: ResumableLoader | None = None

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return 0, 1

    def _stream(self, shards: list[str], train: bool, batch_size: int) -> ClipStream:
        cfg = StreamConfig(self.stage, batch_size, self.seed, self.shuffle_buffer, train, self.buckets, self.transform)
        rank, world = self._rank()
        return ClipStream(shards, cfg, rank, world)

    def _loader_kwargs(self, workers: int) -> dict[str, Any]:
        kw: dict[str, Any] = {"num_workers": workers, "pin_memory": self.pin_memory and torch.cuda.is_available()}
        if workers > 0:
            kw["prefetch_factor"] = self.prefetch_factor
        return kw

    def batches_per_epoch(self, shards: list[str]) -> int:
        """Training batches per epoch and rank."""
        samples = self.samples_per_epoch or count_clips(shards)
        return max(1, samples // (self.batch_size * self._rank()[1]))

    def train_dataloader(self) -> ResumableLoader:
        """The endless, resumable training stream cut into epochs."""
        shards = resolve_shards(self.train_shards)
        loader = ResumableLoader(self._stream(shards, True, self.batch_size), self.batches_per_epoch(shards),
                                 **self._loader_kwargs(self.num_workers))
        if self._train_loader is not None:  # a reload keeps the position
            loader.load_state_dict(self._train_loader.local_state())
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> ResumableLoader | list:
        """A fixed, deterministic set of ``val_batches`` batches per rank (empty when 0)."""
        if self.val_batches == 0:
            return []
        shards = resolve_shards(self.val_shards if self.val_shards is not None else self.train_shards)
        stream = self._stream(shards, False, self.val_batch_size)
        return ResumableLoader(_Repeat(stream, self.val_batches), None, **self._loader_kwargs(0))


class _Repeat(IterableDataset):
    """Exactly ``n`` batches of a finite stream, cycling it when short (ranks stay in step)."""

    def __init__(self, stream: ClipStream, n: int) -> None:
        super().__init__()
        self.stream, self.n, self.start = stream, n, {}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        done = 0
        while done < self.n:
            got = 0
            for batch in self.stream:
                yield batch
                got, done = got + 1, done + 1
                if done == self.n:
                    return
            if got == 0:
                raise RuntimeError("the validation shards give no batch: check val_shards and the clip lengths")


class Stage1DataModule(ClipDataModule):
    """Stage 1: (reference frame, target frame) pairs of one clip, ``transform.min_gap`` frames apart."""

    stage = 1


class Stage2DataModule(ClipDataModule):
    """Stage 2: ``transform.num_motion`` motion frames + ``transform.num_frames`` targets + aligned audio."""

    stage = 2
