"""Temporal-fidelity metrics: does the reconstruction move like the real video?

Per-frame PSNR, SSIM and LPIPS score every frame on its own and are blind to
flicker, jitter or frames in the wrong order. The metrics here compare how
consecutive frames change (``docs/temporal.md`` has the formulas and sources):

* ``tlp`` (tLP, TecoGAN): ``|LPIPS(real_{t-1}, real_t) - LPIPS(recon_{t-1}, recon_t)|``
  with the project's LPIPS v0.1 (AlexNet by default), mean over the pairs.
* ``tof`` (tOF, TecoGAN): per-pixel difference between the optical flow of
  consecutive real frames and that of consecutive reconstructed frames, mean
  over pixels and pairs (pixels). The per-pixel difference is the endpoint
  error (Euclidean norm of the flow difference) by default, as TecoGAN's
  ``metrics.py`` computes it; ``norm="l1"`` takes ``|du| + |dv|`` instead.
* ``warp_error`` (Lai et al. 2018, Sec. 4): MSE between the reconstruction's
  frame ``t`` and its frame ``t-1`` warped to ``t`` by the *real* video's flow,
  over the pixels the real video's forward-backward check finds non-occluded;
  ``warp_error_real`` is the same quantity of the real video (the floor a
  perfect reconstruction reaches).
* ``tdiff``: ``|(recon_t - recon_{t-1}) - (real_t - real_{t-1})|`` on ``[0, 1]``
  RGB, mean over pixels, channels and pairs (no flow).

All are lower-is-better, 0 for a video against itself (``warp_error`` equals
``warp_error_real`` then). Optical flow is OpenCV's Farneback on uint8
grayscale frames with TecoGAN's parameters by default, or torchvision's RAFT
from a weights file (``flow="raft", raft_weights=PATH``); :func:`optical_flow`
serves both flow metrics.

:func:`per_frame_curves` (per-frame PSNR, SSIM, LPIPS) and
:func:`boundary_jump` (how much worse frames next to clip boundaries are than
the others) are the helpers of per-frame quality curves.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness_core.errors import WeightsError
from harness_core.registry import register_metric
from metrics.base import VideoMetric, frames_of, to_unit_range
from metrics.i3d import file_sha256
from metrics.lpips import FRAMES_PER_BATCH, _canonical_net, load_lpips, lpips_distance, per_frame_lpips
from metrics.quality import per_frame_psnr, per_frame_ssim

#: Farneback parameters of TecoGAN's metrics.py: calcOpticalFlowFarneback(prev, next, None, 0.5, 3, 15, 3, 5, 1.2, 0)
FARNEBACK_DEFAULTS: dict[str, Any] = {
    "pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2, "flags": 0,
}
#: torchvision RAFT variants and the default number of refinement iterations (torchvision's forward default)
RAFT_MODELS = ("small", "large")
RAFT_DEFAULT_ITERS = 12
#: smallest frame side RAFT accepts (feature maps of 16x16 at 1/8 resolution)
RAFT_MIN_SIZE = 128
#: frame pairs per RAFT forward pass (memory bound)
RAFT_PAIRS_PER_BATCH = 16
#: forward-backward consistency (Ruder et al. 2016, used by Lai et al. 2018): occluded where
#: |F + G_w|^2 > FB_RELATIVE * (|F|^2 + |G_w|^2) + FB_ABSOLUTE (squared pixels)
FB_RELATIVE = 0.01
FB_ABSOLUTE = 0.5
#: motion boundaries (optional, Lai et al.'s code): |grad F_x|^2 + |grad F_y|^2 > MB_RELATIVE * |F|^2 + MB_ABSOLUTE
MB_RELATIVE = 0.01
MB_ABSOLUTE = 0.002
TOF_NORMS = ("epe", "l1")


# ---------------------------------------------------------------------------------------------- optical flow


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - a dependency of the project
        raise ImportError("Farneback optical flow needs OpenCV: pip install opencv-python-headless") from err
    return cv2


def to_uint8_frames(frames: Tensor) -> np.ndarray:
    """``float [N, 3, H, W]`` in ``[-1, 1]`` -> ``uint8 [N, H, W, 3]`` (clamped and rounded, as a saved video)."""
    unit = ((frames.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return (unit * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _raft_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"RAFT weights file {path} does not exist (flow='raft' needs raft_weights=<torchvision RAFT state dict>)")
    return path.resolve()


@functools.lru_cache(maxsize=None)
def _load_raft(model: str, path: str, device: str, stamp: tuple[int, int]) -> torch.nn.Module:
    """The loaded model, cached per (model, file, device, file size and mtime)."""
    from torchvision.models.optical_flow import raft_large, raft_small

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a weights problem, named by its path
        raise WeightsError(f"RAFT weights file {path} cannot be read as a torch state dict: {type(err).__name__}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"RAFT weights file {path} holds a {type(state).__name__}, not a state dict")
    net = (raft_small if model == "small" else raft_large)(weights=None, progress=False)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"RAFT weights file {path} is not a torchvision raft_{model} state dict: {first}") from err
    return net.eval().requires_grad_(False).to(device)


def load_raft(model: str, weights: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torchvision ``raft_small``/``raft_large`` with the weights of ``weights`` (``weights_only`` load), cached per process.

    Raises:
        ValueError: unknown ``model``.
        WeightsError: the file is missing, unreadable, or not a state dict of that model; the message names the path.
    """
    if model not in RAFT_MODELS:
        raise ValueError(f"raft_model must be one of {RAFT_MODELS}, got {model!r}")
    path = _raft_file(weights)
    stat = path.stat()
    return _load_raft(model, str(path), str(torch.device(device)), (stat.st_size, stat.st_mtime_ns))


def _farneback(a: np.ndarray, b: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    cv2 = _cv2()
    flows = np.empty((a.shape[0], 2) + a.shape[1:3], dtype=np.float32)
    for i in range(a.shape[0]):
        gray_a = cv2.cvtColor(np.ascontiguousarray(a[i]), cv2.COLOR_RGB2GRAY)
        gray_b = cv2.cvtColor(np.ascontiguousarray(b[i]), cv2.COLOR_RGB2GRAY)
        flow = cv2.calcOpticalFlowFarneback(
            gray_a, gray_b, None, params["pyr_scale"], params["levels"], params["winsize"], params["iterations"],
            params["poly_n"], params["poly_sigma"], params["flags"])
        flows[i] = flow.transpose(2, 0, 1)
    return flows


def _raft(a: Tensor, b: Tensor, model: str, weights: str | Path, iters: int) -> Tensor:
    net = load_raft(model, weights, a.device)
    h, w = a.shape[2:]
    # torchvision's correlation pyramid needs feature maps of at least 16x16 (frames >= 128 px): smaller frames are
    # upsampled by an integer factor and the flow is brought back to the frame's pixels
    scale = max(1, -(-RAFT_MIN_SIZE // min(h, w)))
    sh, sw = h * scale, w * scale
    pad_h, pad_w = (-sh) % 8, (-sw) % 8
    out = []
    with torch.no_grad():
        for xs, ys in zip(a.split(RAFT_PAIRS_PER_BATCH), b.split(RAFT_PAIRS_PER_BATCH)):
            if scale > 1:
                xs = F.interpolate(xs, size=(sh, sw), mode="bilinear", align_corners=False)
                ys = F.interpolate(ys, size=(sh, sw), mode="bilinear", align_corners=False)
            if pad_h or pad_w:
                xs = F.pad(xs, (0, pad_w, 0, pad_h), mode="replicate")
                ys = F.pad(ys, (0, pad_w, 0, pad_h), mode="replicate")
            flow = net(xs, ys, num_flow_updates=iters)[-1][:, :, :sh, :sw]
            if scale > 1:
                flow = F.avg_pool2d(flow, scale) / scale
            out.append(flow)
    return torch.cat(out).float()


def optical_flow(frames_a: Tensor, frames_b: Tensor, method: str = "farneback", *,
                 pyr_scale: float = 0.5, levels: int = 3, winsize: int = 15, iterations: int = 3, poly_n: int = 5,
                 poly_sigma: float = 1.2, flags: int = 0, raft_weights: str | Path | None = None,
                 raft_model: str = "small", raft_iters: int = RAFT_DEFAULT_ITERS) -> Tensor:
    """Optical flow from ``frames_a`` to ``frames_b``, ``float32 [N, 2, H, W]`` in pixels, on ``frames_a.device``.

    Channel 0 is the horizontal (x) and channel 1 the vertical (y) displacement:
    ``frames_a[n]`` at pixel ``(x, y)`` corresponds to ``frames_b[n]`` at
    ``(x + flow[n, 0, y, x], y + flow[n, 1, y, x])``. Frames are first quantized
    to uint8 (clamped to ``[-1, 1]``, rounded), as a saved video would be.

    Args:
        frames_a, frames_b: ``float [N, 3, H, W]`` RGB in ``[-1, 1]``.
        method: ``"farneback"`` (OpenCV ``calcOpticalFlowFarneback`` on BT.601
            grayscale, ``cv2.COLOR_RGB2GRAY``, as TecoGAN) or ``"raft"``
            (torchvision RAFT on the uint8 frames rescaled to ``[-1, 1]``;
            frames with a side below 128 px are upsampled bilinearly by the
            smallest integer factor reaching 128 and the flow is average-pooled
            back and divided by it; then replicate-padded to multiples of 8).
        pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags: Farneback
            parameters (defaults: TecoGAN's ``metrics.py``).
        raft_weights: torchvision RAFT state dict file (required for ``"raft"``).
        raft_model: ``"small"`` or ``"large"``.
        raft_iters: RAFT refinement iterations (``num_flow_updates``).

    Raises:
        ValueError: shapes differ or are not ``[N, 3, H, W]``; unknown method; ``"raft"`` without weights.
        WeightsError: the RAFT weights file is missing or invalid.
    """
    if frames_a.shape != frames_b.shape or frames_a.dim() != 4 or frames_a.shape[1] != 3:
        raise ValueError(f"optical_flow expects two [N, 3, H, W] batches of the same shape, got "
                         f"{tuple(frames_a.shape)} and {tuple(frames_b.shape)}")
    if method == "farneback":
        params = {"pyr_scale": pyr_scale, "levels": levels, "winsize": winsize, "iterations": iterations,
                  "poly_n": poly_n, "poly_sigma": poly_sigma, "flags": flags}
        flows = _farneback(to_uint8_frames(frames_a), to_uint8_frames(frames_b), params)
        return torch.from_numpy(flows).to(frames_a.device)
    if method == "raft":
        if raft_weights is None:
            raise ValueError("optical_flow(method='raft') needs raft_weights=<torchvision RAFT state dict file>")
        quantize = lambda x: torch.from_numpy(to_uint8_frames(x)).to(x.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # noqa: E731
        return _raft(quantize(frames_a), quantize(frames_b), raft_model, raft_weights, raft_iters)
    raise ValueError(f"optical flow method must be 'farneback' or 'raft', got {method!r}")


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward warping: ``out[n, :, y, x] = image[n, :, y + flow[n, 1, y, x], x + flow[n, 0, y, x]]``.

    Bilinear ``grid_sample`` (``align_corners=True``: pixel centres at integer
    coordinates), coordinates outside the frame clamped to the border (as Lai
    et al.'s ``Resample2d``).

    Args:
        image: ``float [N, C, H, W]``.
        flow: ``float [N, 2, H, W]`` in pixels (x, y).
    """
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def non_occlusion_mask(flow: Tensor, flow_back: Tensor, motion_boundaries: bool = False) -> Tensor:
    """Pixels where ``flow`` passes the forward-backward consistency check, ``bool [N, H, W]``.

    ``flow`` (F) maps frame ``t`` to ``t-1`` and is defined on frame ``t``;
    ``flow_back`` (G) maps ``t-1`` to ``t``. With ``G_w = warp(G, F)``, a pixel
    is non-occluded when ``|F + G_w|^2 < 0.01 (|F|^2 + |G_w|^2) + 0.5`` (Ruder
    et al. 2016, the occlusion estimate Lai et al. 2018 use). With
    ``motion_boundaries``, pixels where ``|grad F_x|^2 + |grad F_y|^2 > 0.01 |F|^2
    + 0.002`` (forward differences, as Lai et al.'s ``detect_occlusion``) are
    excluded too.
    """
    back = warp(flow_back, flow)
    sq = lambda v: v.pow(2).sum(dim=1)  # noqa: E731
    occluded = sq(flow + back) > FB_RELATIVE * (sq(flow) + sq(back)) + FB_ABSOLUTE
    if motion_boundaries:
        du = torch.zeros_like(flow)
        dv = torch.zeros_like(flow)
        du[..., :, :-1] = flow[..., :, :-1] - flow[..., :, 1:]
        dv[..., :-1, :] = flow[..., :-1, :] - flow[..., 1:, :]
        occluded |= (du.pow(2) + dv.pow(2)).sum(dim=1) > MB_RELATIVE * sq(flow) + MB_ABSOLUTE
    return ~occluded


def _pairs(video: Tensor) -> tuple[Tensor, Tensor]:
    """Frames ``t-1`` and ``t`` of every consecutive pair, each ``[B * (T-1), C, H, W]`` (video-major)."""
    return frames_of(video[:, :, :-1]), frames_of(video[:, :, 1:])


class _FlowOptions:
    """Flow method and parameters shared by ``tof`` and the warping errors (constructor kwargs)."""

    def _init_flow(self, flow: str | None, raft_weights: str | Path | None, raft_model: str, raft_iters: int,
                   farneback: dict[str, Any]) -> None:
        method = flow if flow is not None else ("raft" if raft_weights is not None else "farneback")
        if method not in ("farneback", "raft"):
            raise ValueError(f"{self.name}: flow must be 'farneback' or 'raft', got {flow!r}")
        if method == "farneback" and raft_weights is not None:
            raise ValueError(f"{self.name}: raft_weights given with flow='farneback'; pass flow='raft' (or drop flow)")
        self.flow_method = method
        if method == "farneback":
            self.flow_kwargs: dict[str, Any] = {k: type(v)(farneback.get(k, v)) for k, v in FARNEBACK_DEFAULTS.items()}
            self._flow_info: dict[str, Any] = {"implementation": f"OpenCV {_cv2().__version__} calcOpticalFlowFarneback",
                                               "input": "uint8 frames, BT.601 grayscale (cv2.COLOR_RGB2GRAY)"}
        else:
            if farneback:
                raise ValueError(f"{self.name}: Farneback parameters {sorted(farneback)} given with flow='raft'")
            if raft_model not in RAFT_MODELS:
                raise ValueError(f"{self.name}: raft_model must be one of {RAFT_MODELS}, got {raft_model!r}")
            path = _raft_file(raft_weights)
            load_raft(raft_model, path)  # fail at construction on a bad file, naming it
            self.flow_kwargs = {"raft_weights": str(path), "raft_model": raft_model, "raft_iters": int(raft_iters)}
            import torchvision

            self._flow_info = {"implementation": f"torchvision {torchvision.__version__} raft_{raft_model}",
                               "weights_sha256": file_sha256(path),
                               "input": "uint8 frames rescaled to [-1,1]; sides below 128 px upsampled (bilinear) by the smallest "
                                        "integer factor reaching 128, flow average-pooled back and divided by it; "
                                        "replicate-padded to multiples of 8"}

    def flow(self, frames_a: Tensor, frames_b: Tensor) -> Tensor:
        return optical_flow(frames_a, frames_b, self.flow_method, **self.flow_kwargs)

    def flow_protocol(self) -> dict[str, Any]:
        """The flow method and all its parameters; a RAFT weights file by name and sha256 (not its location)."""
        params = dict(self.flow_kwargs)
        if "raft_weights" in params:
            params["raft_weights"] = Path(params["raft_weights"]).name
        return {"method": self.flow_method, **params, **self._flow_info, "units": "pixels, channel 0 = x, 1 = y"}


# ---------------------------------------------------------------------------------------------- metrics


class TemporalMetric(VideoMetric):
    """Base of the temporal metrics: per video, lower is better, at least 2 frames.

    With ``update(real, fake, n_frames)`` each video is scored on its valid prefix: only the frame pairs whose
    both frames are real frames count (:func:`metrics.base.valid_prefix_values`).
    """

    per_video = True
    higher_is_better = False
    table = "temporal"
    title = "temporal"
    unit = ""
    digits = 4
    min_frames = 2


@register_metric("tlp")
class TLP(TemporalMetric):
    """tLP (TecoGAN): mean over consecutive pairs of ``|LPIPS(real_{t-1}, real_t) - LPIPS(recon_{t-1}, recon_t)|``.

    Args:
        net: LPIPS backbone, ``"alex"`` (default, as TecoGAN) or ``"vgg"``.
        weights: LPIPS backbone weights file (``None``: resolved as ``metrics.lpips`` documents).
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "tlp"
    title = "tLP"
    unit = ""
    digits = 4

    def __init__(self, net: str = "alex", weights: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = _canonical_net(net)
        self.weights = weights
        model = load_lpips(self.net, weights)
        self._weights_info = {"backbone_source": model.backbone_source, "backbone_sha256": model.backbone_sha256,
                              "lin_sha256": model.lin_sha256}

    def _pair_lpips(self, video: Tensor) -> Tensor:
        prev, cur = _pairs(video.clamp(-1, 1))
        dists = [lpips_distance(a, b, self.net, self.weights)
                 for a, b in zip(prev.split(FRAMES_PER_BATCH), cur.split(FRAMES_PER_BATCH))]
        return torch.cat(dists).double().reshape(video.shape[0], video.shape[2] - 1)

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return (self._pair_lpips(real) - self._pair_lpips(fake)).abs().mean(dim=1)

    def protocol(self) -> dict[str, Any]:
        return {self.name: {
            "method": "tLP (Chu et al. 2020, TecoGAN): mean over consecutive frame pairs of "
                      "|LPIPS(real_{t-1}, real_t) - LPIPS(recon_{t-1}, recon_t)|, then mean over videos; not scaled by 100",
            "lpips_net": self.net,
            "lpips_version": "0.1 (lpips package)",
            "input": "RGB in [-1,1] (clamped), evaluation resolution",
            **self._weights_info,
        }}


@register_metric("tof")
class TOF(_FlowOptions, TemporalMetric):
    """tOF (TecoGAN): mean over pairs and pixels of the difference between real and reconstructed optical flow (pixels).

    Args:
        flow: ``"farneback"`` (default) or ``"raft"`` (default when ``raft_weights`` is given).
        norm: per-pixel difference of the two flow vectors: ``"epe"`` (default; Euclidean
            norm, endpoint error, as TecoGAN's ``metrics.py``) or ``"l1"`` (``|du| + |dv|``).
        raft_weights, raft_model, raft_iters: RAFT options (see :func:`optical_flow`).
        pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags: Farneback parameters
            (defaults 0.5, 3, 15, 3, 5, 1.2, 0, TecoGAN's).
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "tof"
    title = "tOF"
    unit = "px"
    digits = 3

    def __init__(self, flow: str | None = None, norm: str = "epe", raft_weights: str | Path | None = None,
                 raft_model: str = "small", raft_iters: int = RAFT_DEFAULT_ITERS, **kwargs: Any) -> None:
        farneback = {k: kwargs.pop(k) for k in list(kwargs) if k in FARNEBACK_DEFAULTS}
        super().__init__(**kwargs)
        if norm not in TOF_NORMS:
            raise ValueError(f"tof: norm must be one of {TOF_NORMS}, got {norm!r}")
        self.norm = norm
        self._init_flow(flow, raft_weights, raft_model, raft_iters, farneback)

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        b, t = real.shape[0], real.shape[2]
        diff = self.flow(*_pairs(real)).double() - self.flow(*_pairs(fake)).double()  # [B * (T-1), 2, H, W]
        per_pixel = diff.pow(2).sum(dim=1).sqrt() if self.norm == "epe" else diff.abs().sum(dim=1)
        return per_pixel.mean(dim=(1, 2)).reshape(b, t - 1).mean(dim=1)

    def protocol(self) -> dict[str, Any]:
        per_pixel = ("endpoint error |OF_real - OF_recon|_2 (TecoGAN metrics.py)" if self.norm == "epe"
                     else "L1 over the two components |du| + |dv|")
        return {self.name: {
            "method": "tOF (Chu et al. 2020, TecoGAN): mean over consecutive frame pairs and pixels of the per-pixel "
                      "difference between the flow of real_{t-1} -> real_t and of recon_{t-1} -> recon_t, pixels; "
                      "whole frame (no crop), all frames",
            "norm": self.norm,
            "per_pixel": per_pixel,
            "flow": self.flow_protocol(),
        }}


def warping_errors(video: Tensor, real: Tensor, flow_fn, motion_boundaries: bool = False) -> Tensor:
    """Per-pair warping error of ``video`` under the flow of ``real``, ``float64 [B, T-1]``.

    For each pair, ``video``'s frame ``t-1`` is warped to ``t`` by the real
    video's flow ``t -> t-1`` and compared with its frame ``t``: the mean squared
    difference on ``[0, 1]`` RGB over the channels of the pixels that pass the
    real flow's forward-backward check (all pixels when none does, as Lai et
    al.'s ``evaluate_WarpError.py``).

    Args:
        video, real: ``float [B, 3, T, H, W]`` in ``[-1, 1]``.
        flow_fn: ``(frames_a, frames_b) -> [N, 2, H, W]`` flow from a to b.
        motion_boundaries: also exclude motion boundaries (see :func:`non_occlusion_mask`).
    """
    b, _, t = real.shape[:3]
    real_prev, real_cur = _pairs(real)
    flow_back = flow_fn(real_cur, real_prev)  # t -> t-1, defined on frame t
    flow_fwd = flow_fn(real_prev, real_cur)  # t-1 -> t
    mask = non_occlusion_mask(flow_back.double(), flow_fwd.double(), motion_boundaries).unsqueeze(1)  # [N, 1, H, W]
    prev, cur = _pairs(to_unit_range(video).double())
    squared = (warp(prev, flow_back.double()) - cur).pow(2)  # [N, 3, H, W]
    count = mask.sum(dim=(1, 2, 3)) * squared.shape[1]
    masked = (squared * mask).sum(dim=(1, 2, 3)) / count.clamp_min(1)
    errors = torch.where(count > 0, masked, squared.mean(dim=(1, 2, 3)))
    return errors.reshape(b, t - 1)


@register_metric("warp_error")
class EWarp(_FlowOptions, TemporalMetric):
    """Warping error (Lai et al. 2018, Sec. 4) of the reconstruction under the real video's flow and occlusion mask.

    Args:
        flow, raft_weights, raft_model, raft_iters, Farneback parameters: as ``tof``.
        motion_boundaries: also exclude motion boundaries of the real flow from the mask
            (Lai et al.'s code does; default False: the forward-backward check only).
        **kwargs: torchmetrics ``Metric`` options.
    """

    name = "warp_error"
    title = "E_warp"
    unit = ""
    digits = 5
    _subject = "reconstruction"

    def __init__(self, flow: str | None = None, raft_weights: str | Path | None = None, raft_model: str = "small",
                 raft_iters: int = RAFT_DEFAULT_ITERS, motion_boundaries: bool = False, **kwargs: Any) -> None:
        farneback = {k: kwargs.pop(k) for k in list(kwargs) if k in FARNEBACK_DEFAULTS}
        super().__init__(**kwargs)
        self.motion_boundaries = bool(motion_boundaries)
        self._init_flow(flow, raft_weights, raft_model, raft_iters, farneback)

    def _measured(self, real: Tensor, fake: Tensor) -> Tensor:
        return fake

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return warping_errors(self._measured(real, fake), real, self.flow, self.motion_boundaries).mean(dim=1)

    def protocol(self) -> dict[str, Any]:
        return {self.name: {
            "method": f"warping error (Lai et al. 2018, Sec. 4) of the {self._subject}: frame t-1 warped to t by the "
                      "REAL video's flow t -> t-1 (bilinear grid_sample, align_corners, border clamp), squared "
                      "difference to frame t on [0,1] RGB averaged over channels and non-occluded pixels (all pixels "
                      "when none), mean over consecutive pairs, then over videos",
            "occlusion": f"forward-backward check on the real flow: non-occluded where |F + G_w|^2 < {FB_RELATIVE:g} "
                         f"(|F|^2 + |G_w|^2) + {FB_ABSOLUTE:g}, F = flow t -> t-1, G_w = flow t-1 -> t warped by F "
                         "(Ruder et al. 2016)",
            "motion_boundaries": (f"excluded: |grad F_x|^2 + |grad F_y|^2 > {MB_RELATIVE:g} |F|^2 + {MB_ABSOLUTE:g}"
                                  if self.motion_boundaries else False),
            "flow": self.flow_protocol(),
        }}


@register_metric("warp_error_real")
class EWarpReal(EWarp):
    """The warping error of the real video itself: the floor ``warp_error`` reaches for a perfect reconstruction.

    Same options and protocol as ``warp_error``; only the real video is measured.
    """

    name = "warp_error_real"
    title = "E_warp (real)"
    _subject = "real video (floor of warp_error)"

    def _measured(self, real: Tensor, fake: Tensor) -> Tensor:
        return real


def pair_tdiff(real: Tensor, fake: Tensor) -> Tensor:
    """Temporal-difference error of every consecutive pair ``(t-1, t)``, ``float64 [B, T-1]``: the mean over
    channels and pixels of ``|(recon_t - recon_{t-1}) - (real_t - real_{t-1})|`` on ``[0, 1]`` RGB (clamped)."""
    r, f = to_unit_range(real).double(), to_unit_range(fake).double()
    diff = (f[:, :, 1:] - f[:, :, :-1]) - (r[:, :, 1:] - r[:, :, :-1])
    return diff.abs().mean(dim=(1, 3, 4))


@register_metric("tdiff")
class TDiff(TemporalMetric):
    """Temporal-difference error: mean of ``|(recon_t - recon_{t-1}) - (real_t - real_{t-1})|`` on ``[0, 1]`` RGB."""

    name = "tdiff"
    title = "tDiff"
    unit = ""
    digits = 4

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return pair_tdiff(real, fake).mean(dim=1)

    def protocol(self) -> dict[str, Any]:
        return {self.name: {
            "method": "mean over channels, pixels and consecutive frame pairs of |(recon_t - recon_{t-1}) - "
                      "(real_t - real_{t-1})|, RGB in [0,1] (clamped), then mean over videos; no flow",
        }}


# ---------------------------------------------------------------------------------------------- per-frame curves


def per_frame_curves(real: Tensor, fake: Tensor, net: str = "alex", weights: str | Path | None = None) -> dict[str, Tensor]:
    """Per-frame quality, ``{"psnr", "ssim", "lpips"}`` each ``float64 [B, T]``.

    PSNR and SSIM as ``metrics.quality.per_frame_psnr`` / ``per_frame_ssim``
    (the ``psnr``/``ssim`` metrics' per-frame values); LPIPS v0.1 per frame as
    the ``lpips`` metric (``net`` AlexNet by default).

    Args:
        real, fake: ``float [B, 3, T, H, W]`` in ``[-1, 1]``.
    """
    if real.shape != fake.shape:
        raise ValueError(f"per_frame_curves: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    return {
        "psnr": per_frame_psnr(real, fake).double(),
        "ssim": per_frame_ssim(real, fake).double(),
        "lpips": per_frame_lpips(real, fake, net, weights),
    }


def boundary_jump(per_frame: Tensor, boundaries: Sequence[int]) -> Tensor:
    """Mean of a per-frame value at frames next to boundaries minus its mean at the other frames, ``float64 [B]``.

    A boundary ``t`` (the first frame of a chunk, e.g. where a chunk-based
    tokenizer starts a new chunk) makes frames ``t-1`` and ``t`` adjacent; only
    boundaries with ``0 < t < T`` count (0 and ``T`` are not between two frames).
    The result is ``mean(per_frame[:, adjacent]) - mean(per_frame[:, interior])``
    with interior = all other frames: positive for an error (LPIPS) that
    jumps at boundaries, negative for a quality (PSNR, SSIM) that drops there.

    Args:
        per_frame: ``[B, T]`` per-frame values (e.g. from :func:`per_frame_curves`).
        boundaries: clip start frames.

    Returns:
        ``float64 [B]``; zeros when no boundary lies in ``(0, T)``; NaN when every frame is adjacent to one.
    """
    if per_frame.dim() != 2:
        raise ValueError(f"boundary_jump expects per-frame values [B, T], got {tuple(per_frame.shape)}")
    values = per_frame.double()
    b, t = values.shape
    adjacent = torch.zeros(t, dtype=torch.bool, device=values.device)
    for start in boundaries:
        start = int(start)
        if 0 < start < t:
            adjacent[start - 1] = adjacent[start] = True
    if not adjacent.any():
        return torch.zeros(b, dtype=torch.float64, device=values.device)
    if adjacent.all():
        return torch.full((b,), float("nan"), dtype=torch.float64, device=values.device)
    return values[:, adjacent].mean(dim=1) - values[:, ~adjacent].mean(dim=1)


def crossing_jump(per_pair: Tensor, boundaries: Sequence[int]) -> Tensor:
    """Mean of a per-pair value over the pairs that cross a boundary minus its mean over the other pairs,
    ``float64 [B]``.

    Pair ``p`` joins frames ``p`` and ``p + 1`` (``per_pair`` is ``[B, T-1]``, e.g. :func:`pair_tdiff`); it
    crosses boundary ``t`` when ``p + 1 == t``. Zeros when no boundary lies in ``(0, T)``, NaN when every pair
    crosses one.
    """
    if per_pair.dim() != 2:
        raise ValueError(f"crossing_jump expects per-pair values [B, T-1], got {tuple(per_pair.shape)}")
    values = per_pair.double()
    b, pairs = values.shape
    crossing = torch.zeros(pairs, dtype=torch.bool, device=values.device)
    for start in boundaries:
        if 0 < int(start) <= pairs:
            crossing[int(start) - 1] = True
    if not crossing.any():
        return torch.zeros(b, dtype=torch.float64, device=values.device)
    if crossing.all():
        return torch.full((b,), float("nan"), dtype=torch.float64, device=values.device)
    return values[:, crossing].mean(dim=1) - values[:, ~crossing].mean(dim=1)


# ---------------------------------------------------------------------------------------------- boundary jumps


class BoundaryJump(VideoMetric):
    """Base of the boundary-jump metrics: a per-frame (or per-pair) quantity next to the tokenizer's clip,
    chunk or tile boundaries minus the same quantity elsewhere, per video.

    ``boundaries`` are the first frames of the tokenizer's clips / chunks / tiles
    (``VideoTokenizer.temporal_boundaries(T)``: 16, 32, ... for the 16-frame-clip
    baselines, 17, 33, ... for VideoFlexTok's 17-frame chunks, none for CoordTok);
    the engine passes them (``uses_boundaries``), ``harness compare`` takes them
    from ``--boundaries``. Without a boundary inside the video the value is 0.
    """

    uses_boundaries = True
    per_video = True
    table = "temporal"
    min_frames = 2
    unit = ""
    digits = 4

    def __init__(self, boundaries: Sequence[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.boundaries = sorted(int(b) for b in (boundaries or ()))

    #: what the value measures, recorded in the protocol with the boundaries
    method = ""

    def protocol(self) -> dict[str, Any]:
        return {self.name: {"method": self.method, "boundaries": self.boundaries}}


@register_metric("psnr_jump")
class PSNRJump(BoundaryJump):
    """PSNR of the frames on either side of a boundary minus the PSNR of the other frames (dB, per video).

    Negative when quality drops at the tokenizer's boundaries; 0 without boundaries or jumps
    (:func:`boundary_jump` of :func:`metrics.quality.per_frame_psnr`). Higher is better: closer to 0
    (or above) means no seam.
    """

    name = "psnr_jump"
    title = "PSNR jump"
    higher_is_better = True
    unit = "dB"
    digits = 2
    method = ("per video: mean PSNR of frames t-1 and t for every boundary t in (0, T) minus mean PSNR of the "
              "other frames (per-frame PSNR as the psnr metric); mean over videos; 0 without boundaries")

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return boundary_jump(per_frame_psnr(real, fake), self.boundaries)


@register_metric("tdiff_jump")
class TDiffJump(BoundaryJump):
    """Temporal-difference error of the frame pairs that cross a boundary minus that of the other pairs (per video).

    Positive when the reconstruction jumps at the tokenizer's boundaries more than between its other frames
    (:func:`crossing_jump` of :func:`pair_tdiff`); lower is better, 0 without boundaries.
    """

    name = "tdiff_jump"
    title = "tDiff jump"
    higher_is_better = False
    digits = 4
    method = ("per video: mean tDiff of the pairs (t-1, t) for every boundary t in (0, T) minus mean tDiff of "
              "the other consecutive pairs (RGB in [0,1]); mean over videos; 0 without boundaries")

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return crossing_jump(pair_tdiff(real, fake), self.boundaries)

