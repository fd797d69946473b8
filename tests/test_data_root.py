"""``data.root`` may start with ``~``: the suite loads (``check_root``) and the dataset builds from the same expanded path."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from harness.config import load_suite
from harness.data.datasets import build_dataset

from conftest import shared_path


def _suite(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "home_root", "output_dir": str(tmp_path / "results"),
        "data": {"resolution": 32, "frames": 16, "cache_dir": str(tmp_path / "cache"), **data},
        "tokenizers": [{"id": "grid3d_tiny", "name": "grid3d", "kwargs": {"size": "tiny"}}],
    }))
    return path


def test_folder_root_under_home_loads(sample_paths, tmp_path, monkeypatch):
    home = tmp_path / "home"
    videos = home / "videos" / "samples"
    videos.mkdir(parents=True)
    for path in sample_paths:
        shutil.copy(path, videos / path.name)
    monkeypatch.setenv("HOME", str(home))
    suite = load_suite(_suite(tmp_path, {"dataset": "folder", "root": "~/videos"}))
    assert suite.data.root == str(home / "videos")
    dataset = build_dataset(suite.data)
    names = {record.path.name for record in [*dataset.train, *dataset.eval]}
    assert names == {path.name for path in sample_paths}
    assert all(record.path.is_relative_to(home) for record in dataset.train)


def test_ucf101_root_under_home_loads(tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(shared_path("data", "ucf101_mini"), home / "data" / "UCF-101")
    monkeypatch.setenv("HOME", str(home))
    suite = load_suite(_suite(tmp_path, {"dataset": "ucf101", "root": "~/data/UCF-101"}))
    dataset = build_dataset(suite.data)
    assert dataset.classes == ["HandleObject", "RideBike", "WalkCampus"] and dataset.train and dataset.eval
