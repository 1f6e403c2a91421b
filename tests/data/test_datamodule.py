"""Streaming DataModules: batch contents, determinism, rank/worker split, mid-epoch resume of the position."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from benchmarks.synthetic import write_shards
from cyberhost.data.buckets import BucketConfig
from cyberhost.data.conditions import SAMPLE_KEYS
from cyberhost.data.datamodule import ClipStream, Stage1DataModule, Stage2DataModule, StreamConfig, resolve_shards
from cyberhost.data.transforms import TransformConfig

BUCKETS = BucketConfig(area=6144, multiple=16, tolerance=0.15)
TRANSFORM = TransformConfig(num_frames=4, num_motion=2, face_crop=32, hand_crop=32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("dm"), num_clips=8, num_frames=20, size=(96, 80), clips_per_shard=2)


def _dm(cls: type, shards: Path | str | list[str], workers: int = 0, seed: int = 0) -> Stage1DataModule:
    return cls(shards if isinstance(shards, str | list) else str(shards), batch_size=2, num_workers=workers, seed=seed, samples_per_epoch=16,
               buckets=BUCKETS, transform=TRANSFORM)


def _fingerprints(loader: object, n: int | None = None) -> list[float]:
    batches = loader if n is None else itertools.islice(loader, n)  # islice never pulls batch n + 1
    return [float(b["target"].float().sum() + b["driving_map"].float().sum()) for b in batches]


@pytest.mark.parametrize("cls", [Stage1DataModule, Stage2DataModule])
def test_batch_keys_and_shapes(shards: Path, cls: type) -> None:
    batch = next(iter(_dm(cls, shards).train_dataloader()))
    assert set(batch) == set(SAMPLE_KEYS)
    b, f = batch["target"].shape[:2]
    h, w = batch["target"].shape[-2:]
    assert (b, f) == (2, 1 if cls is Stage1DataModule else 4) and (h, w) in BUCKETS.buckets()
    assert batch["target"].dtype == torch.uint8 and batch["reference"].shape == (b, 3, h, w)
    assert batch["keypoints"].shape == (b, f, 133, 2) and 0 <= batch["keypoints"].min()
    assert batch["keypoints"].max() <= 1 and batch["keypoints_valid"].shape == (b, f, 133)
    assert batch["driving_map"].shape == (b, f, 3, h, w)
    if cls is Stage2DataModule:
        assert batch["motion"].shape == (b, 2, 3, h, w) and batch["audio"].shape == (b, TRANSFORM.audio_samples)
    else:
        assert batch["motion"].shape == (b, 0, 3, h, w) and batch["audio"].shape == (b, 0)


def test_deterministic_for_a_seed(shards: Path) -> None:
    a = _fingerprints(_dm(Stage1DataModule, shards, seed=3).train_dataloader())
    b = _fingerprints(_dm(Stage1DataModule, shards, seed=3).train_dataloader())
    c = _fingerprints(_dm(Stage1DataModule, shards, seed=4).train_dataloader())
    assert len(a) == 8 and a == b and a != c


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_continues_the_stream(shards: Path, workers: int) -> None:
    want = _fingerprints(_dm(Stage2DataModule, shards, workers).train_dataloader())
    first = _dm(Stage2DataModule, shards, workers).train_dataloader()
    head = _fingerprints(first, 3)
    state = first.state_dict()
    resumed = _dm(Stage2DataModule, shards, workers).train_dataloader()
    resumed.load_state_dict(state)
    assert head + _fingerprints(resumed) == want


def test_next_epoch_continues_not_repeats(shards: Path) -> None:
    loader = _dm(Stage1DataModule, shards).train_dataloader()
    assert _fingerprints(loader) != _fingerprints(loader)  # epoch 2 reshuffles and redraws


def test_ranks_read_disjoint_clips(shards: Path) -> None:
    cfg = StreamConfig(1, 1, train=False, buckets=BUCKETS, transform=TRANSFORM)
    urls = resolve_shards(str(shards))
    seen = []
    for rank in range(2):
        seen.append({float(b["target"].float().sum()) for b in ClipStream(urls, cfg, rank, 2)})
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]


def test_brace_pattern_and_missing_path(shards: Path) -> None:
    tars = sorted(p.name for p in shards.glob("*.tar"))
    assert len(resolve_shards([str(shards / t) for t in tars])) == 4
    with pytest.raises(FileNotFoundError, match="no shard"):
        resolve_shards(str(shards / "missing"))


@pytest.fixture(scope="module")
def named_shards(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same shards as ``shard-000000.tar`` ... so a brace pattern names them."""
    out = tmp_path_factory.mktemp("named")
    for i, tar in enumerate(resolve_shards(str(shards))):
        (out / f"shard-{i:06d}.tar").write_bytes(Path(tar).read_bytes())
    return out


@pytest.mark.parametrize("scheme", ["file://", "pipe:cat "])
def test_url_pattern_shards_give_the_local_batches(shards: Path, named_shards: Path, scheme: str) -> None:
    local = [str(p) for p in sorted(named_shards.glob("*.tar"))]
    pattern = f"{scheme}{named_shards}/shard-{{000000..000003}}.tar"
    assert len(resolve_shards(pattern)) == 4
    want = _fingerprints(_dm(Stage2DataModule, local).train_dataloader())
    got = _fingerprints(_dm(Stage2DataModule, pattern).train_dataloader())
    assert len(want) == 8 and got == want


def test_url_shards_need_samples_per_epoch_at_construction(named_shards: Path) -> None:
    with pytest.raises(ValueError, match="samples_per_epoch"):
        Stage1DataModule(f"pipe:cat {named_shards}/shard-{{000000..000003}}.tar", batch_size=2)


# ----------------------------------------------------------------------------- two ranks


def _uneven_shards(directory: Path, counts: tuple[int, ...] = (6, 2, 4)) -> Path:
    """Shards of ``counts`` clips: ranks read different numbers of batches per pass."""
    from benchmarks.synthetic import make_clip
    from cyberhost.data.shards import ClipShardWriter

    n = 0
    for index, count in enumerate(counts):
        with ClipShardWriter(directory, shard_index=index) as writer:
            for _ in range(count):
                writer.write(make_clip(f"syn{n:04d}-0000", 20, (96, 80), seed=n))
                n += 1
            writer.finish_input({"file": f"s{index}.mp4", "status": "ok", "reason": "", "clips": count})
    return directory


def test_two_rank_mid_epoch_resume_restores_each_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks on uneven shards: rank 0's saved state holds both ranks' positions and, loaded on both
    ranks, each continues its own stream exactly. The collective is stood in for here;
    tests/training/test_distributed.py runs the real one (2 gloo processes, slow)."""
    import json

    from cyberhost.data.datamodule import ResumableLoader

    urls = resolve_shards(str(_uneven_shards(tmp_path / "uneven")))
    cfg = StreamConfig(2, 2, seed=5, shuffle_buffer=4, buckets=BUCKETS, transform=TRANSFORM)

    def loader(rank: int) -> ResumableLoader:
        return ResumableLoader(ClipStream(urls, cfg, rank, 2), batches_per_epoch=None)

    want = {r: _fingerprints(loader(r), 9) for r in range(2)}
    first = {r: loader(r) for r in range(2)}
    head = {r: _fingerprints(first[r], 4) for r in range(2)}
    local = [{"rank": r, **first[r].local_state()} for r in range(2)]
    assert local[0]["positions"] != local[1]["positions"]  # uneven shards: rank 0's position is wrong for rank 1

    def all_gather_object(out: list, obj: dict, group: object = None) -> None:
        assert obj == local[0]  # rank 0 contributes its own position
        out[:] = local

    with monkeypatch.context() as m:
        m.setattr(torch.distributed, "is_initialized", lambda: True)
        m.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
        m.setattr(torch.distributed, "all_gather_object", all_gather_object)
        saved = json.loads(json.dumps(first[0].state_dict()))  # the checkpoint rank 0 writes; every rank loads it
    for r in range(2):
        resumed = loader(r)
        resumed.load_state_dict(saved)
        assert head[r] + _fingerprints(resumed, 5) == want[r], r
