"""The clip store (issue 15, items 1-2): store clips equal decoded clips, a killed build resumes, damaged entries are
rebuilt, and ``data.store`` is validated.

Real videos only: the installed sample videos, and copies of ``carphone_pristine.mp4`` (small, so builds are quick).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.config import DataConfig, SuiteError, load_suite
from harness.data.datasets import DataError, build_dataset
from harness.data.decode import to_model_range
from harness.data.sampling import ClipCache, TrainClipDataset, TrainClips, evaluation_clips
from harness.data.store import ClipStore, open_store, prepare_store, store_active

from conftest import REPO

RES, FRAMES = 32, 8
ORPHAN = "file without a manifest record"


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    """The ``samples`` dataset (3 real videos, 16-frame clips, stride 2) and its built store."""
    cache = tmp_path_factory.mktemp("cache")
    dataset = build_dataset(DataConfig(dataset="samples", resolution=RES, frames=16, frame_stride=2, memory_cache=False,
                                       cache_dir=str(cache)))
    return dataset, prepare_store(dataset, workers=2, progress=False)


@pytest.fixture
def carphones(sample_paths, tmp_path) -> Path:
    """A ``folder`` root with three copies of carphone_pristine.mp4 (120 frames each, three store entries)."""
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(sample_paths[2], root / f"{name}.mp4")
    return root


def folder_dataset(root: Path, cache: Path):
    return build_dataset(DataConfig(dataset="folder", root=str(root), resolution=RES, frames=FRAMES, store="on",
                                    cache_dir=str(cache)))


def store_state(store: ClipStore) -> dict:
    """The manifest entries (sources, sizes, checksums) and the bytes of every entry file."""
    entries = json.loads(store.manifest_path.read_text())["entries"]
    return {"entries": entries, "files": {name: (store.root / name).read_bytes() for name in entries}}


# --------------------------------------------------------------------------- equality with on-the-fly decoding


def test_store_clips_equal_decoded_clips(sample_store, tmp_path):
    dataset, store = sample_store
    assert store_active(dataset.cfg) and len(store.entries) == 3
    decoded, stored = TrainClips(dataset, seed=7), TrainClips(dataset, seed=7, store=store)
    for index in range(6):  # same video and start draws, same bytes
        (a, label_a, n_a), (b, label_b, n_b) = decoded.clip(index), stored.clip(index)
        assert b.dtype == np.uint8 and b.shape == (16, RES, RES, 3)
        assert label_a == label_b and n_a == n_b == 16 and np.array_equal(a, b)
    items, uint8_items = TrainClipDataset(decoded, 6), TrainClipDataset(stored, 6, model_range=False)
    assert uint8_items[4][0].dtype == torch.uint8 and torch.equal(to_model_range(uint8_items[4][0]), items[4][0])
    clips = evaluation_clips(dataset, seed=3)
    from_store = ClipCache(tmp_path / "with_store", store=store)
    for clip in clips:
        assert np.array_equal(from_store.load(clip), clip.decode())
    assert from_store.path(clips[0]) is None and not (tmp_path / "with_store" / "clips").exists()  # nothing copied
    # a memory cache filled from the store holds the decoded training ranges
    cached = TrainClips(dataset.__class__(dataset.cfg.model_copy(update={"memory_cache": True})), seed=7, store=store)
    assert np.array_equal(cached.clip(2)[0], decoded.clip(2)[0])


def test_data_loader_workers_supply_the_in_process_batches(sample_store):
    """Training batches from two DataLoader workers reading the store (uint8 items, converted after) equal the
    batches decoded in this process, step by step."""
    from harness.config import TrainConfig
    from harness.fit import micro_batches
    from harness.train import clip_batches

    dataset, store = sample_store
    cfg, plan = TrainConfig(steps=3, batch_size=2), micro_batches(2, None, 1, 0)
    in_process = clip_batches(TrainClips(dataset, seed=5), cfg, plan, None, seed=0)
    workers = clip_batches(TrainClips(dataset.__class__(dataset.cfg.model_copy(update={"num_workers": 2})), seed=5,
                                      store=store), cfg, plan, None, seed=0)
    for step in range(3):
        expected, got = in_process(step, 0, 2)[0], workers(step, 0, 2)[0]
        assert got.dtype == torch.float32 and torch.equal(got, expected), step


def test_store_reads_are_checked(sample_store):
    dataset, store = sample_store
    assert open_store(dataset).root == store.root  # complete: other ranks can open it
    record = dataset.eval[0]  # ends at the last frame of its video
    with pytest.raises(DataError, match="outside the .* frames of clip store entry"):
        store.frames(record, record.stop - 2, 4)
    other = record.__class__(Path("/nowhere/video.mp4"), 0, 0, 10)
    with pytest.raises(DataError, match="/nowhere/video.mp4 is not in the clip store"):
        store.frames(other, 0, 4)
    assert store.protocol() == {"method": store.protocol()["method"], "resolution": RES, "resize": store.protocol()["resize"],
                                "checksum": "zlib.crc32 over the .npy file bytes", "store": store.root.name}


# --------------------------------------------------------------------------- interrupted builds and damaged entries

KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    from harness.config import DataConfig
    from harness.data import store
    from harness.data.datasets import build_dataset

    save = store.ClipStore._save_manifest

    def save_then_die(self, entries):  # the whole build (this process and its pool) dies after recording one entry
        save(self, entries)
        if entries:
            os.killpg(0, signal.SIGKILL)

    store.ClipStore._save_manifest = save_then_die
    store.MANIFEST_EVERY = 0.0
    dataset = build_dataset(DataConfig(dataset="folder", root=sys.argv[1], resolution=%d, frames=%d, store="on",
                                       cache_dir=sys.argv[2]))
    store.prepare_store(dataset, workers=1, progress=False)
""" % (RES, FRAMES))


def test_killed_build_resumes_and_equals_a_fresh_build(carphones, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(carphones), str(cache)], env=env, cwd=REPO,
                          start_new_session=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = ClipStore(folder_dataset(carphones, cache))
    assert len(json.loads(store.manifest_path.read_text())["entries"]) == 1  # killed after recording one entry

    report = store.build(workers=1, progress=False)
    assert report.reused == 1 and report.built == 2
    # the pool may have finished a second entry before the kill: it has no manifest record, so it is rebuilt
    assert all(reason.startswith(ORPHAN) for _, reason in report.rebuilt) and len(report.rebuilt) <= 1
    assert not list(store.root.glob(".*.tmp"))

    fresh = ClipStore(folder_dataset(carphones, tmp_path / "fresh"))
    assert fresh.build(workers=2, progress=False).built == 3
    assert fresh.root.name == store.root.name and store_state(store) == store_state(fresh)


def test_damaged_entries_are_detected_and_rebuilt(carphones, tmp_path):
    store = ClipStore(folder_dataset(carphones, tmp_path / "cache"))
    store.build(workers=2, progress=False)
    good = store_state(store)
    first, second, third = sorted(good["entries"])

    with open(store.root / first, "r+b") as handle:  # truncated
        handle.truncate(len(good["files"][first]) // 2)
    with pytest.raises(DataError, match="incomplete: 1 of 3 videos .*truncated"):
        store.check()
    report = store.build(workers=1, progress=False)
    assert report.reused == 2 and [name for name, _ in report.rebuilt] == [first] and "truncated" in report.rebuilt[0][1]

    data = bytearray(good["files"][second])  # corrupt, same size: found by the checksum only
    data[-100] ^= 0xFF
    (store.root / second).write_bytes(bytes(data))
    assert store.build(workers=1, progress=False).rebuilt == []
    report = store.build(workers=1, verify=True, progress=False)
    assert report.rebuilt == [(second, "checksum mismatch (corrupt)")]

    manifest = json.loads(store.manifest_path.read_text())  # written, but killed before the manifest recorded it
    del manifest["entries"][third]
    store.manifest_path.write_text(json.dumps(manifest))
    report = store.build(workers=1, progress=False)
    assert [name for name, _ in report.rebuilt] == [third] and report.rebuilt[0][1].startswith(ORPHAN)
    assert store_state(store) == good


def test_adding_a_video_reuses_the_other_entries(carphones, tmp_path):
    """One store per frame protocol: a dataset that gains a video decodes only that one, and the smaller dataset's
    store (same folder) stays complete afterwards."""
    cache = tmp_path / "cache"
    small = ClipStore(folder_dataset(carphones, cache))
    assert small.build(workers=2, progress=False).built == 3
    before = store_state(small)
    shutil.copy(carphones / "a.mp4", carphones / "d.mp4")
    large = ClipStore(folder_dataset(carphones, cache))
    assert large.root == small.root
    report = large.build(workers=1, progress=False)
    assert (report.reused, report.built, report.rebuilt) == (3, 1, [])
    after = store_state(large)
    assert {name: after["files"][name] for name in before["files"]} == before["files"] and len(after["files"]) == 4
    (carphones / "d.mp4").unlink()
    assert ClipStore(folder_dataset(carphones, cache)).check().build(workers=1, progress=False).built == 0


STORE_SUITE = """
name: store_{mode}
output_dir: {out}
data: {{dataset: samples, resolution: 32, frames: 16, memory_cache: {memory_cache}, store: auto, cache_dir: {cache}}}
train: {{steps: 3, batch_size: 2, checkpoint_every: 3}}
evaluate: {{metrics: [psnr], batch_size: 3}}
tokenizers:
  - {{id: grid3d_tiny, name: grid3d, kwargs: {{size: tiny, channels: 8}}}}
"""


@pytest.mark.slow
def test_suite_with_the_store_equals_the_decoding_suite(tmp_path):
    """A suite that reads training and evaluation clips from the store (``memory_cache: false``, ``store: auto``)
    gives the per-video values of the suite that decodes them, and copies no evaluation clip out of the store."""
    tables = {}
    for mode, memory_cache in (("store", "false"), ("decode", "true")):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(STORE_SUITE.format(mode=mode, out=tmp_path / mode, memory_cache=memory_cache,
                                           cache=tmp_path / f"cache_{mode}"))
        done = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "-q"], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        tables[mode] = (tmp_path / mode / "grid3d_tiny" / "per_video.csv").read_text()
        index = json.loads((tmp_path / mode / "eval_clips.json").read_text())
        assert all((entry["cached"] is None) == (mode == "store") for entry in index)
    assert (tmp_path / "cache_store" / "clip_store").is_dir() and not (tmp_path / "cache_store" / "clips").exists()
    assert len(list((tmp_path / "store" / "gallery").glob("grid3d_tiny_*.gif"))) == 3  # real clips decoded again
    assert tables["store"] == tables["decode"]


# --------------------------------------------------------------------------- config


def test_data_store_setting(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "t", "data": {"dataset": "samples", "memory_cache": False},
                                     "tokenizers": [{"id": "g", "name": "grid3d", "kwargs": {"size": "tiny"}}]}))
    data = load_suite(suite).data
    assert data.store == "auto" and store_active(data)
    assert not store_active(data.model_copy(update={"memory_cache": True}))
    for value, active in (("on", True), ("off", False), ("auto", True), ("true", True), ("false", False)):
        assert store_active(load_suite(suite, [f"data.store={value}"]).data) is active, value  # YAML: on/off are booleans
        assert store_active(DataConfig(store=value if value in ("on", "off", "auto") else value == "true",
                                       memory_cache=False)) is active
    with pytest.raises(SuiteError) as err:
        load_suite(suite, ["data.store=sometimes"])
    message = str(err.value)
    assert "\n" not in message and "'data.store'" in message and "'auto', 'on', 'off'" in message


def test_entries_built_in_chunks_equal_one_decode(sample_paths, tmp_path, monkeypatch):
    """Building decodes ``CHUNK_BYTES`` of source frames at a time: 7-frame chunks give the bytes of one decode."""
    from harness.data import store
    from harness.data.decode import decode_frames

    bikes = sample_paths[1]  # 640x272
    monkeypatch.setattr(store, "CHUNK_BYTES", 640 * 272 * 3 * 7)
    for resize in ("bilinear_antialias", "bicubic_pil"):
        target = tmp_path / f"bikes_{resize}.npy"
        record = store._build_entry(str(bikes), str(target), 30, RES, resize)
        assert np.array_equal(np.load(target), decode_frames(bikes, 0, 30, 1, RES, resize))
        assert record["bytes"] == target.stat().st_size and record["shape"] == [30, RES, RES, 3]


def test_open_store_before_the_build_names_the_store(carphones, tmp_path):
    dataset = folder_dataset(carphones, tmp_path / "cache")
    with pytest.raises(DataError, match=r"clip store .*r32_\w+ is incomplete: 3 of 3 videos not usable .*not built yet"):
        open_store(dataset)
    assert open_store(build_dataset(dataset.cfg.model_copy(update={"store": "off"}))) is None
