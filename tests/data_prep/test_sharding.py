"""Many machines: --num-shards/--shard-index runs into one folder or separate folders + merge, and idle parts."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from cyberhost.data import iter_clips
from cyberhost.data.schema import CLIP_FIELDS, META_FIELDS
from cyberhost.data.shards import ClipShardWriter, commit_records
from data_prep import merge
from data_prep.__main__ import main
from data_prep.run import partition
from tests.data.synthetic import make_clip
from tests.data_prep.media import sample_frames, tone, write_video

# file names chosen so that part 0 of 2 gets two inputs (run with 2 workers) and part 1 gets one
INPUTS = {"talk_2.mp4": "astronaut", "talk_3.mp4": "cameraman", "talk_1.mp4": "grace_hopper"}


def _args(raw: Path, out: Path, conf: Path, *extra: str) -> list[str]:
    return ["--input", str(raw), "--output", str(out), "--config", str(conf), *extra]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Part 0 (2 workers, progress bar on) and part 1 (1 worker) into separate folders p0 and p1."""
    root = tmp_path_factory.mktemp("sharding")
    raw = root / "raw"
    raw.mkdir()
    for name, sample in INPUTS.items():
        write_video(raw / name, sample_frames(sample, 12), tone(0.48))
    (raw / "notes.txt").write_text("not a video")  # every part sees it; only part 0 reports it
    conf = root / "prep.yaml"
    conf.write_text(yaml.safe_dump({"clip_frames": 12, "clip_stride": 12, "min_clip_frames": 12, "max_short_side": 160, "filters": {"min_face_size": 16.0}}))
    assert [partition(sorted(INPUTS), i, 2) for i in range(2)] == [["talk_2.mp4", "talk_3.mp4"], ["talk_1.mp4"]]
    return raw, conf, root


@pytest.fixture(scope="module")
def part0(parts):
    raw, conf, root = parts
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # the progress bar is on: tqdm writes to sys.stderr
        assert main(_args(raw, root / "p0", conf, "--num-shards", "2", "--shard-index", "0", "--workers", "2")) == 0
    return root / "p0", err.getvalue()


@pytest.fixture(scope="module")
def part1(parts):
    raw, conf, root = parts
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(_args(raw, root / "p1", conf, "--num-shards", "2", "--shard-index", "1", "--workers", "1", "--no-progress")) == 0
    assert "data_prep: 1 file ignored (part 0 lists them in report.json)" in err.getvalue()
    return root / "p1"


@pytest.fixture(scope="module")
def merged(part0, part1, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "all"
    merge.main(["--output", str(out), str(part0[0]), str(part1)])
    return out


@pytest.fixture(scope="module")
def shared(parts, part0):
    """Part 1 run again, this time into part 0's folder: one folder written by two machines."""
    raw, conf, root = parts
    folder = root / "shared"
    shutil.copytree(part0[0], folder)
    assert main(_args(raw, folder, conf, "--num-shards", "2", "--shard-index", "1", "--workers", "1", "--no-progress")) == 0
    return folder


def _keys(out: Path) -> list[str]:
    return sorted(c["key"] for c in iter_clips(out))


def test_parts_hold_their_share_only(part0, part1):
    p0 = {e["file"] for e in json.loads((part0[0] / "report.json").read_text())["files"]}
    p1 = {e["file"] for e in json.loads((part1 / "report.json").read_text())["files"]}
    assert (p0, p1) == ({"talk_2.mp4", "talk_3.mp4"}, {"talk_1.mp4"})
    names = [p.name for p in (part0[0] / "shards").glob("*.tar")]
    assert names and all(n.startswith("clips-00000-") for n in names)
    assert {n.split("-")[2] for n in names} == {"000", "001"}  # two workers, one shard each
    assert all(p.name.startswith("clips-00001-") for p in (part1 / "shards").glob("*.tar"))


def _ignored(out: Path) -> list[str]:
    return [e["file"] for e in json.loads((out / "report.json").read_text())["ignored"]]


def test_only_part_0_reports_ignored_files_and_merging_lists_them_once(part0, part1, merged, shared):
    assert (_ignored(part0[0]), _ignored(part1)) == (["notes.txt"], [])
    assert "data_prep: 1 file ignored (see " in part0[1]
    assert _ignored(merged) == _ignored(shared) == ["notes.txt"]
    merge.main(["--output", str(merged), str(part0[0]), str(part1), str(part0[0] / "shards")])  # again, part 0 twice
    assert _ignored(merged) == ["notes.txt"]


def test_progress_bar_shows_videos_clips_and_frames_per_s(part0):
    err = part0[1]
    assert "2/2" in err and "video" in err and "clips=2" in err and "frames/s=" in err and "fps=" not in err


@pytest.mark.parametrize("which", ["merged", "shared"])
def test_union_has_every_clip_once(request, which):
    out = request.getfixturevalue(which)
    keys = _keys(out)
    assert Counter(keys).most_common(1)[0][1] == 1 and len(keys) == 3
    assert sorted(c["source"] for c in iter_clips(out)) == sorted(INPUTS)
    tars = [p.name for p in (out / "shards").glob("*.tar")]
    assert len(tars) == len(set(tars)) == 3 and {t.split("-")[1] for t in tars} == {"00000", "00001"}
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert (manifest["inputs"], manifest["ok"], manifest["clips"], manifest["frames"]) == (3, 3, 3, 36)
    assert sorted(k for s in manifest["shards"] for k in s["keys"]) == keys
    assert all((out / s["path"]).is_file() for s in manifest["shards"])
    assert [e["file"] for e in report["files"]] == sorted(INPUTS) and all(e["status"] == "ok" for e in report["files"])
    assert manifest["config"]["max_short_side"] == 160


def test_merged_and_shared_folders_hold_the_same_arrays(merged, shared):
    a, b = ({c["key"]: c for c in iter_clips(out)} for out in (merged, shared))
    assert sorted(a) == sorted(b)
    for key in a:
        for name in CLIP_FIELDS:
            np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key}:{name}")
        assert {m: a[key][m] for m in META_FIELDS} == {m: b[key][m] for m in META_FIELDS}


def test_merge_is_idempotent_and_rebuilds_the_shared_folder(merged, shared, part0, part1, capsys):
    before = sorted(p.name for p in (merged / "shards").iterdir())
    merge.main(["--output", str(merged), str(part0[0]), str(part1)])
    assert "0 commit record(s) copied" in capsys.readouterr().out
    assert sorted(p.name for p in (merged / "shards").iterdir()) == before
    (shared / "manifest.json").unlink()
    (shared / "report.json").unlink()
    merge.main(["--output", str(shared)])  # no parts: rebuild from the folder's commit records
    assert json.loads((shared / "report.json").read_text()) == json.loads((merged / "report.json").read_text())


def test_merge_refuses_an_input_finished_twice(merged, part1, tmp_path):
    again = tmp_path / "again" / "shards"
    again.mkdir(parents=True)
    for path in (part1 / "shards").iterdir():
        shutil.copy(path, again / path.name.replace("clips-00001-", "clips-00007-"))
    record = next(again.glob("*.json"))
    data = json.loads(record.read_text())
    data["shard"] = data["shard"].replace("clips-00001-", "clips-00007-")
    record.write_text(json.dumps(data))
    before = sorted(p.name for p in (merged / "shards").iterdir())
    with pytest.raises(SystemExit, match="'talk_1.mp4' was finished twice"):
        merge.main(["--output", str(merged), str(again.parent)])
    assert sorted(p.name for p in (merged / "shards").iterdir()) == before  # checked before copying anything


def test_merge_of_synthetic_parts_and_name_clash(tmp_path):
    for i, part in enumerate(("a", "b")):
        with ClipShardWriter(tmp_path / part / "shards", shard_index=i) as w:
            w.write(make_clip(f"src{i}-0000", frames=4, seed=i))
            w.finish_input({"file": f"{part}.mp4", "status": "ok", "reason": "", "clips": 1, "frames": 4})
    merge.main(["--output", str(tmp_path / "out"), str(tmp_path / "a"), str(tmp_path / "b")])
    assert _keys(tmp_path / "out") == ["src0-0000", "src1-0000"]
    assert len(commit_records(tmp_path / "out" / "shards")) == 2
    clash = tmp_path / "c" / "shards"  # a record named like a's, holding b's input
    clash.mkdir(parents=True)
    shutil.copy(next((tmp_path / "b" / "shards").glob("*.json")), clash / next((tmp_path / "a" / "shards").glob("*.json")).name)
    with pytest.raises(SystemExit, match="share a name but differ"):
        merge.main(["--output", str(tmp_path / "out"), str(clash.parent)])
    with pytest.raises(SystemExit, match="no commit record"):
        merge.main(["--output", str(tmp_path / "out"), str(tmp_path / "empty")])


def test_more_parts_than_inputs(tmp_path):
    """4 parts, 1 input: the 3 idle parts exit 0 with a note; the owner judges only its own inputs."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "only.mp4").write_text("not a video")  # its owner has nothing that gives a clip
    (raw / "notes.txt").write_text("x")  # reported by part 0, idle or not
    out = tmp_path / "out"
    with ClipShardWriter(out / "shards", shard_index=9) as w:  # another machine's finished, good input
        w.write(make_clip("other-0000", frames=4))
        w.finish_input({"file": "other.mp4", "status": "ok", "reason": "", "clips": 1, "frames": 4})
    owner = next(i for i in range(4) if partition(["only.mp4"], i, 4))
    for index in range(4):
        args = ["--input", str(raw), "--output", str(out), "--num-shards", "4", "--shard-index", str(index), "--workers", "1", "--no-progress"]
        if index == owner:
            with pytest.raises(SystemExit, match=f"no input of part {owner}/4 gave a clip"):
                main(args)
        else:
            assert main(args) == 0
    report = {e["file"]: e for e in json.loads((out / "report.json").read_text())["files"]}
    assert report["only.mp4"]["status"] == "skipped" and report["other.mp4"]["status"] == "ok"
    assert _ignored(out) == ["notes.txt"]


def test_idle_part_says_so(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "only.mp4").write_text("x")
    idle = next(i for i in range(4) if not partition(["only.mp4"], i, 4))
    assert main(["--input", str(raw), "--output", str(tmp_path / "out"), "--num-shards", "4", "--shard-index", str(idle)]) == 0
    assert f"part {idle}/4: none of the 1 inputs falls in this part; nothing to do" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # an idle part writes nothing


def test_worker_cores_pins_only_when_every_worker_gets_its_own_cpu() -> None:
    from data_prep.run import worker_cores

    assert worker_cores(1, [0, 1]) == [None]  # one worker may use every core MediaPipe wants
    assert worker_cores(2, [4, 7]) == [4, 7]  # the CPUs this process may use, e.g. a SLURM allocation
    assert worker_cores(3, [0, 1]) == [None, None, None]
