"""Shard round trip, atomic commit and reader behaviour."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from cyberhost.data import ClipShardWriter, decode_clip, iter_clips, validate_clip
from cyberhost.data.shards import commit_records, decode_frames, encode_clip, list_shards, remove_uncommitted
from tests.data.synthetic import make_clip

ARRAYS = ("audio", "keypoints", "face_box", "hand_boxes", "hand_clarity", "thorax", "movement_range")


def _write(directory, clips_per_input: dict[str, int], encoding: str = "jpg", max_bytes: int = 1 << 30) -> dict:
    clips = {}
    with ClipShardWriter(directory, shard_index=3, worker=1, max_shard_bytes=max_bytes, frame_encoding=encoding) as w:
        for n, (src, count) in enumerate(clips_per_input.items()):
            for i in range(count):
                clip = make_clip(f"{src}-{i:04d}", seed=10 * n + i)
                clips[clip["key"]] = clip
                w.write(clip)
            w.finish_input({"file": src, "status": "ok" if count else "skipped", "reason": "", "clips": count})
    return clips


@pytest.mark.parametrize("encoding", ["jpg", "mp4"])
def test_round_trip_matches_schema_and_arrays(tmp_path, encoding):
    written = _write(tmp_path, {"a": 2, "b": 0, "c": 1}, encoding)
    got = list(iter_clips(tmp_path))
    assert [c["key"] for c in got] == ["a-0000", "a-0001", "c-0000"]
    for clip in got:
        validate_clip(clip)
        want = written[clip["key"]]
        for name in ARRAYS:
            np.testing.assert_array_equal(clip[name], want[name])
        assert clip["frames"].shape == want["frames"].shape
        assert np.abs(clip["frames"].astype(int) - want["frames"]).mean() < 6  # lossy but close
        assert clip["fps"] == 25.0 and clip["source"] == "talk/a.mp4" and clip["backend"] == "synthetic"


def test_commit_record_lists_every_input_and_names_never_collide(tmp_path):
    _write(tmp_path, {"a": 1, "b": 0})
    (record,) = commit_records(tmp_path)
    assert [i["file"] for i in record["inputs"]] == ["a", "b"]
    assert record["inputs"][0]["keys"] == ["a-0000"] and record["num_clips"] == 1
    assert record["shard"].startswith("clips-00003-001-") and (tmp_path / record["shard"]).is_file()
    other = tmp_path / "other"
    _write(other, {"z": 1})
    assert commit_records(other)[0]["shard"] != record["shard"]


def test_shards_roll_at_input_boundaries(tmp_path):
    _write(tmp_path, {"a": 2, "b": 2, "c": 1}, max_bytes=1)
    records = commit_records(tmp_path)
    assert len(records) == 3 and all(len(r["inputs"]) == 1 for r in records)
    assert len(list(iter_clips(tmp_path))) == 5


def test_orphans_and_temporaries_are_invisible_and_removed(tmp_path):
    _write(tmp_path, {"a": 1})
    w = ClipShardWriter(tmp_path, worker=2)
    w.write(make_clip("x-0000"))  # killed before finish_input: only a .tmp exists
    orphan = tmp_path / "clips-00000-009-deadbeef.tar"  # renamed but never recorded
    with tarfile.open(orphan, "w"):
        pass
    assert [c["key"] for c in iter_clips(tmp_path)] == ["a-0000"]
    removed = {p.name for p in remove_uncommitted(tmp_path)}
    assert orphan.name in removed and any(n.endswith(".tmp") for n in removed)
    assert {p.suffix for p in tmp_path.iterdir()} == {".tar", ".json"}


def test_failed_writer_commits_nothing(tmp_path):
    with pytest.raises(KeyError):
        with ClipShardWriter(tmp_path) as w:
            w.write(make_clip("a-0000"))
            w.finish_input({"file": "a", "status": "ok", "reason": "", "clips": 1})
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_webdataset_pipeline_decodes_the_same(tmp_path):
    _write(tmp_path, {"a": 2})
    urls = [str(p) for p in list_shards(tmp_path)]
    got = list(wds.WebDataset(urls, shardshuffle=False).map(decode_clip))
    ref = list(iter_clips(tmp_path))
    assert [c["key"] for c in got] == [c["key"] for c in ref]
    np.testing.assert_array_equal(got[1]["frames"], ref[1]["frames"])


@pytest.mark.parametrize("encoding", ["jpg", "mp4"])
def test_window_and_random_frames(encoding):
    clip = make_clip(frames=10)
    sample = encode_clip(clip, encoding)
    full = decode_clip(sample)
    part = decode_clip(sample, window=(3, 4))
    np.testing.assert_array_equal(part["frames"], full["frames"][3:7])
    np.testing.assert_array_equal(part["keypoints"], clip["keypoints"][3:7])
    np.testing.assert_array_equal(part["audio"], clip["audio"][1920 : 1920 + 2560])
    assert part["start"] == pytest.approx(1.5 + 3 / 25) and part["num_frames"] == 4
    np.testing.assert_array_equal(decode_frames(sample, [8, 2]), full["frames"][[8, 2]])
    with pytest.raises(ValueError, match="window"):
        decode_clip(sample, window=(8, 4))


def test_invalid_clip_is_refused(tmp_path):
    clip = make_clip()
    clip["audio"] = clip["audio"][:-100]
    with pytest.raises(ValueError, match="audio"):
        encode_clip(clip)
    sample = encode_clip(make_clip())
    meta = json.loads(sample["meta.json"])
    meta["num_frames"] = 99
    sample["meta.json"] = json.dumps(meta).encode()
    with pytest.raises(ValueError, match="metadata"):
        decode_clip(sample)
