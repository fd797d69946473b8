"""Suite configuration (harness.config): unknown-key messages, typed overrides, data geometry, dataset-specific keys,
the shared profile path, the package layout."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import GenerationConfig, Suite, SuiteError, TrainConfig, load_suite
from harness.config.errors import RENAMED_KEYS
from harness.config.schema import GenerationOverrides, TokenizerSpec, TrainOverrides, dataset_specific_keys, generation_config
from harness.config.validate import fill_geometry, tokenizer_kwargs

from conftest import REPO, shared_path

COORDTOK = {"id": "coordtok_tiny", "name": "coordtok", "kwargs": {"size": "tiny", "width": 32, "heads": 2}}
GRID3D = {"id": "grid3d_tiny", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}}


def write_suite(tmp_path: Path, tokenizers: list[dict] | None = None, **keys) -> Path:
    """A small suite (samples, 16 frames at 32x32) with top-level ``keys`` replaced, at ``tmp_path/suite.yaml``."""
    suite = {
        "name": "tiny", "output_dir": str(tmp_path / "results"),
        "data": {"dataset": "samples", "resolution": 32, "frames": 16},
        "train": {"steps": 3, "batch_size": 2, "lr": 1.0e-3},
        "evaluate": {"metrics": ["psnr", "ssim"]},
        "tokenizers": tokenizers if tokenizers is not None else [GRID3D, COORDTOK],
        **keys,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def load_error(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(SuiteError) as err:
        load_suite(path, overrides)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("key, path, allowed", [
    ("nmae", "'nmae'; allowed keys:", ["name", "data", "tokenizers", "generation"]),
    ("data.resolutoin", "'data.resolutoin'; allowed keys under data:", ["resolution", "frame_stride", "cache_dir"]),
    ("train.stepz", "'train.stepz'; allowed keys under train:", list(TrainConfig.model_fields)),
    ("evaluate.metricz", "'evaluate.metricz'; allowed keys under evaluate:", ["metrics", "metric_kwargs", "chunk_batch"]),
    ("generation.stepz", "'generation.stepz'; allowed keys under generation:", list(GenerationConfig.model_fields)),
])
def test_unknown_key_names_file_key_path_and_allowed_keys(tmp_path, key, path, allowed):
    message = load_error(write_suite(tmp_path), [f"{key}=1"])
    assert f"unknown key {path}" in message
    listed = message.split(": ")[-1].split(", ")
    assert set(allowed) <= set(listed)


@pytest.mark.parametrize("block, config", [("train", TrainConfig), ("generation", GenerationConfig)])
def test_unknown_key_in_a_tokenizer_override_names_the_tokenizer_id(tmp_path, block, config):
    entry = {**COORDTOK, block: {"stepz": 10}}
    message = load_error(write_suite(tmp_path, [GRID3D, entry]))
    where = f"tokenizers[coordtok_tiny].{block}"
    assert f"unknown key '{where}.stepz'; allowed keys under {where}: " in message
    assert message.split(f"under {where}: ")[1].split(", ") == list(config.model_fields)


@pytest.mark.parametrize("block, old", sorted(RENAMED_KEYS))
def test_a_renamed_key_names_its_new_name(tmp_path, block, old):
    new = RENAMED_KEYS[(block, old)]
    if block == "kwargs":
        message = load_error(write_suite(tmp_path, [{**GRID3D, "kwargs": {**GRID3D["kwargs"], old: 16}}]))
        assert f"unknown argument(s) ['{old}'] for grid3d (renamed to 'tokenizers[grid3d_tiny].kwargs.{new}')" in message
        return
    message = load_error(write_suite(tmp_path), [f"{block}.{old}=4"])
    assert f"unknown key '{block}.{old}' (renamed to '{block}.{new}'); allowed keys under {block}: " in message
    assert new in message.split(": ")[-1].split(", ")
    if block == "generation":  # also inside a tokenizer's overrides
        message = load_error(write_suite(tmp_path, [GRID3D, {**COORDTOK, "generation": {old: 4}}]))
        where = "tokenizers[coordtok_tiny].generation"
        assert f"unknown key '{where}.{old}' (renamed to '{where}.{new}'); allowed keys under {where}: " in message


def test_unknown_key_of_an_entry_and_of_an_entry_without_id(tmp_path):
    message = load_error(write_suite(tmp_path, [GRID3D, {**COORDTOK, "kwarg": {}}]))
    assert "unknown key 'tokenizers[coordtok_tiny].kwarg'; allowed keys under tokenizers[coordtok_tiny]:" in message
    assert "kwargs" in message and "budgets" in message
    message = load_error(write_suite(tmp_path, [GRID3D, {"name": "grid3d", "foo": 1}]))
    assert "unknown key 'tokenizers[1].foo'" in message


def test_invalid_values_name_the_key_path(tmp_path):
    message = load_error(write_suite(tmp_path, [GRID3D, {**COORDTOK, "train": {"steps": -1}}]))
    assert "invalid value at 'tokenizers[coordtok_tiny].train.steps'" in message
    message = load_error(write_suite(tmp_path, [GRID3D, {**COORDTOK, "generation": {"model": "XXL"}}]))
    assert "tokenizers[coordtok_tiny].generation.model: must be one of" in message and "'XXL'" in message
    message = load_error(write_suite(tmp_path, [GRID3D], generation={"model": "XXL"}))
    assert message.endswith("generation.model: must be one of ['B', 'L', 'S', 'XL', 'tiny'], got 'XXL'")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "must be a mapping" in load_error(path)


# --------------------------------------------------------------------------- typed overrides


def test_train_overrides_are_typed_and_the_entry_keys_win(tmp_path):
    entry = {**COORDTOK, "train": {"steps": 7, "lr": 1.0e-4}}  # lr equal to TrainConfig's default still wins over 1e-3
    suite = load_suite(write_suite(tmp_path, [GRID3D, entry]))
    grid, coord = suite.tokenizers
    assert isinstance(coord.train, TrainOverrides) and coord.train.model_dump() == {"steps": 7, "lr": 1.0e-4}
    assert grid.train.model_dump() == {}
    merged = suite.train_config(coord)
    assert isinstance(merged, TrainConfig)
    assert (merged.steps, merged.batch_size, merged.lr) == (7, 2, 1.0e-4)
    assert suite.train_config(grid) == suite.train
    # config.json records the entry as the suite spelled it
    assert coord.model_dump(mode="json")["train"] == {"steps": 7, "lr": 1.0e-4}


def test_generation_overrides_merge_over_the_suite_block(tmp_path):
    tokenizers = [
        {**GRID3D, "generation": {"steps": 5, "lr": 1.0e-4}},
        {**COORDTOK, "generation": {"enabled": False}},
        {"id": "plain", "name": "grid3d", "kwargs": {"size": "tiny"}},
    ]
    suite = load_suite(write_suite(tmp_path, tokenizers, generation={"enabled": True, "steps": 200, "lr": 1.0e-3}))
    assert isinstance(suite.generation, GenerationConfig)
    first, second, plain = (generation_config(suite, t) for t in suite.tokenizers)
    assert isinstance(suite.tokenizers[0].generation, GenerationOverrides)
    assert (first.enabled, first.steps, first.lr, first.batch_size) == (True, 5, 1.0e-4, 64)
    assert second.enabled is False and second.steps == 200
    assert plain.model_dump() == suite.generation.model_dump()


def test_generation_disabled_unless_a_block_enables_it(tmp_path):
    tokenizers = [{**GRID3D, "generation": {"enabled": True, "steps": 3}}, COORDTOK]
    suite = load_suite(write_suite(tmp_path, tokenizers))
    assert suite.generation is None
    enabled, absent = (generation_config(suite, t) for t in suite.tokenizers)
    assert enabled.enabled and enabled.steps == 3 and absent is None
    suite = load_suite(write_suite(tmp_path, [GRID3D], generation={"steps": 3}))
    assert generation_config(suite, suite.tokenizers[0]).enabled is False  # enabled defaults to False


# --------------------------------------------------------------------------- dataset-specific keys


@pytest.mark.parametrize("assignment, message", [
    ("data.fold=2", "data.fold: 2 is read only by dataset ucf101, not by data.dataset 'samples'; remove the key"),
    ("data.short_videos=pad", "data.short_videos: 'pad' is read only by datasets davis2017, ucf101, not by data.dataset 'samples'"),
    ("data.extensions=[.mkv]", "data.extensions: ['.mkv'] is read only by datasets folder, kinetics600, mcl_jcv, tokenbench, "
                               "not by data.dataset 'samples'"),
])
def test_a_dataset_specific_key_set_for_another_dataset_is_one_error_line(tmp_path, assignment, message):
    assert message in load_error(write_suite(tmp_path), [assignment])


def test_dataset_specific_keys_are_accepted_where_read_and_at_their_default_anywhere(tmp_path):
    assert dataset_specific_keys() == ["fold", "extensions", "short_videos"]
    path = write_suite(tmp_path)
    assert load_suite(path, ["data.fold=1", "data.short_videos=drop"]).data.fold == 1  # defaults: nothing to reject
    ucf = load_suite(path, ["data.dataset=ucf101", "data.fold=2", "data.short_videos=pad"], check_data=False)
    assert (ucf.data.fold, ucf.data.short_videos) == (2, "pad")
    folder = load_suite(path, ["data.dataset=folder", "data.extensions=[.mkv]"], check_data=False)
    assert folder.data.extensions == [".mkv"]


# --------------------------------------------------------------------------- data geometry


def test_geometry_is_filled_from_data_for_constructors_that_take_it(tmp_path):
    suite = load_suite(write_suite(tmp_path), overrides=["data.frames=8"])
    grid, coord = suite.tokenizers
    assert grid.kwargs == GRID3D["kwargs"]
    assert coord.kwargs == {**COORDTOK["kwargs"], "frames": 8, "resolution": 32}
    assert tokenizer_kwargs(suite, coord) == coord.kwargs  # idempotent: the runner calls it again
    from harness.stages.context import build_tokenizer

    model = build_tokenizer(suite, coord, {})
    assert (model.frames, model.resolution) == (8, 32)


def test_conflicting_geometry_kwarg_is_rejected_and_an_equal_one_accepted(tmp_path):
    conflict = {**COORDTOK, "kwargs": {**COORDTOK["kwargs"], "frames": 32}}
    message = load_error(write_suite(tmp_path, [conflict]))
    assert "tokenizers[coordtok_tiny].kwargs.frames: 32 differs from data.frames 16" in message
    conflict = {**COORDTOK, "kwargs": {**COORDTOK["kwargs"], "resolution": 64}}
    assert "tokenizers[coordtok_tiny].kwargs.resolution: 64 differs from data.resolution 32" in load_error(write_suite(tmp_path, [conflict]))
    spelled = {**COORDTOK, "kwargs": {**COORDTOK["kwargs"], "frames": 16, "resolution": 32}}
    assert load_suite(write_suite(tmp_path, [spelled])).tokenizers[0].kwargs == spelled["kwargs"]


def test_fingerprint_is_the_same_whether_geometry_is_spelled_out_or_not(tmp_path):
    from harness.results import fingerprint
    from harness.stages.train import train_fingerprint

    spelled = {**COORDTOK, "kwargs": {"frames": 16, **COORDTOK["kwargs"], "resolution": 32}}
    prints = []
    for entry in (COORDTOK, spelled):
        suite = load_suite(write_suite(tmp_path, [entry]))
        payload = train_fingerprint(suite, suite.tokenizers[0])
        prints.append(fingerprint(payload))
    assert prints[0] == prints[1]


def test_fingerprint_spells_renamed_kwargs_as_before_the_rename(tmp_path):
    """A folder trained with ``clip_frames: 17`` (before issue 25) matches the suite that now says ``chunk_frames: 17``."""
    from harness.stages.train import train_fingerprint

    entry = {**GRID3D, "kwargs": {**GRID3D["kwargs"], "chunk_frames": 17}}
    suite = load_suite(write_suite(tmp_path, [entry]))
    kwargs = train_fingerprint(suite, suite.tokenizers[0])["kwargs"]
    assert kwargs == {**GRID3D["kwargs"], "clip_frames": 17}


def test_shipped_suites_load_and_do_not_repeat_the_geometry():
    for path in sorted((REPO / "suites").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for entry in raw.get("tokenizers", []):
            assert not {"frames", "resolution"} & set(entry.get("kwargs", {})), (path.name, entry.get("id"))
    suite = load_suite(REPO / "suites" / "samples_cpu.yaml")
    coord = next(t for t in suite.tokenizers if t.name == "coordtok")
    assert (coord.kwargs["frames"], coord.kwargs["resolution"]) == (32, 64)
    assert generation_config(suite, coord).enabled and generation_config(suite, coord).steps == 200


def test_paper_suite_fills_geometry_from_its_data():
    root = shared_path("data", "ucf101_mini")
    suite = load_suite(REPO / "suites" / "ucf101_128f.yaml", overrides=[f"data.root={root}"])
    for entry in suite.tokenizers:
        if entry.name == "coordtok":
            assert (entry.kwargs["frames"], entry.kwargs["resolution"]) == (128, 128)
    vae = next(t for t in suite.tokenizers if t.id == "vae_causal")
    assert generation_config(suite, vae).enabled is False


# --------------------------------------------------------------------------- one schema family


def test_profile_suite_is_read_through_the_shared_path(tmp_path):
    from harness.profile import ProfileSuite, ProfileTokenizer, load_profile_suite

    suite = load_profile_suite(REPO / "suites" / "cost_vs_length.yaml")
    assert isinstance(suite, ProfileSuite) and all(isinstance(t, ProfileTokenizer) for t in suite.tokenizers)
    assert issubclass(ProfileTokenizer, TokenizerSpec)
    path = tmp_path / "cost.yaml"
    path.write_text("tokenizers: [{label: a, name: grid3d, kwarg: {}}]\n")
    with pytest.raises(SuiteError, match=r"unknown key 'tokenizers\[a\]\.kwarg'; allowed keys under tokenizers\[a\]: name, kwargs, label"):
        load_profile_suite(path)
    path.write_text("tokenizers: [{label: a, name: grid3d, kwargs: {sizee: tiny}}]\n")
    with pytest.raises(SuiteError, match=r"tokenizers\[a\]\.kwargs: unknown argument\(s\) \['sizee'\] for grid3d"):
        load_profile_suite(path)
    path.write_text("lengths: [16, 32]\ntokenizers: [{label: c, name: coordtok, kwargs: {frames: 16}}]\n")
    with pytest.raises(SuiteError, match=r"tokenizers\[c\]\.kwargs\.frames: 16 differs from lengths 32"):
        load_profile_suite(path)
    path.write_text("tokenizers: [{label: x, name: not_installed}]\n")  # skipped by the sweep, accepted here
    assert load_profile_suite(path).tokenizers[0].name == "not_installed"


def test_profile_and_run_suites_fill_geometry_the_same_way():
    from harness.profile import profile_geometry
    from video_tokenizers.coordtok import CoordTok
    from video_tokenizers.grid3d import Grid3dVAE

    assert fill_geometry(CoordTok, {"size": "tiny"}, profile_geometry(64, 128)) == {"size": "tiny", "frames": 64, "resolution": 128}
    assert fill_geometry(Grid3dVAE, {"size": "tiny"}, profile_geometry(64, 128)) == {"size": "tiny"}


def test_schema_imports_without_torch():
    code = "import sys, harness.config; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_schema_and_errors_import_nothing_of_the_harness():
    """The schema is data only: registries, generators and datasets are the validator's business (issue 25 item 5)."""
    for name, allowed in (("schema.py", []), ("errors.py", ["harness_core.errors"])):
        tree = ast.parse((REPO / "harness" / "config" / name).read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        project = [m for m in imported if m.split(".")[0] in ("harness", "harness_core", "metrics", "video_tokenizers")]
        assert project == allowed, (name, project)


def test_suite_model_validates_without_the_file_path():
    suite = Suite.model_validate({"name": "x", "tokenizers": [{"id": "a", "name": "grid3d", "train": {"steps": 1}}]})
    assert suite.train_config(suite.tokenizers[0]).steps == 1 and generation_config(suite, suite.tokenizers[0]) is None
