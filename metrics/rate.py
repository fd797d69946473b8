"""Rate of a tokenizer in bits per pixel (bpp), and the Bjontegaard delta rate (BD-rate) between two RD curves.

Issue 27: a video tokenizer is a learned compressor, so every row of a
leaderboard carries the bits it keeps per pixel of the video,
``bpp = bits per video / (frames x height x width)``, where ``bits per video``
is counted over every chunk the engine encodes (:func:`harness.chunks.reconstruct_video`)
and, for a flexible tokenizer, at the row's token budget. The bits depend on
what the tokenizer hands the engine (:class:`harness_core.api.Tokens`); the
*kind* of the rate says which definition applied (:data:`RATE_KINDS`):

* ``nominal`` (discrete tokens, ``Tokens.indices``): ``tokens x log2(K)``, the
  size of the indices stored as fixed-length ``log2 K``-bit codes (``K`` =
  ``codebook_size()``);
* ``entropy`` (discrete tokens, shown beside ``nominal``): ``tokens x H``, with
  ``H`` the Shannon entropy in bits of the histogram of every index the row
  emitted over the evaluation set (the counts that codebook usage,
  :mod:`metrics.codebook`, tallies): the rate an ideal memoryless entropy coder
  (one fixed code for all positions, fitted to this histogram) would reach on
  these indices. ``H <= log2 K``, so it is at most the nominal rate. It is a
  plug-in estimate on the evaluation set (biased low for few tokens) and
  ignores context: a context-adaptive coder may go lower;
* ``uncompressed fp16`` (continuous latents): latent values per video (every
  floating-point value of ``Tokens.latents``, summed over chunks) x
  :data:`LATENT_BITS` = 16: the latents stored in half precision (fp16), the
  harness's stated convention (issue 27: "fp16 unless stated"); whatever dtype
  the tokenizer computes in, the rate is of fp16 storage. No entropy coding, so
  it is an upper bound of what a coder of the latents would need;
* ``bitstream`` (a classical codec, ``Tokens.bits`` set): the measured size of
  the encoded bitstream, 8 x its bytes, container overhead excluded, summed
  over chunks.

Kinds are different quantities: compare bpp of one kind as equals; read
``nominal`` and ``uncompressed fp16`` as sizes before entropy coding (upper
bounds), ``entropy`` as an idealized coder and ``bitstream`` as a real file.

BD-rate (:func:`bd_rate`): the mean relative rate difference of a test RD
curve against an anchor over their common quality range, with log-rate
interpolated as a piecewise cubic Hermite (PCHIP) function of quality and
integrated exactly. Sources: G. Bjontegaard, "Calculation of average PSNR
differences between RD-curves", ITU-T SG16 Q.6 VCEG-M33 (2001) (the metric,
cubic polynomial fit through 4 points), "Improvements of the BD-PSNR model",
VCEG-AM91 (2008); PCHIP as in the JCT-VC common test conditions sheet
(JCTVC-L1100) and JVET's (JVET-T2010), also used by the AOM CTC; C. Herglotz
et al., "The Bjontegaard Bible: why your way of comparing video codecs may be
wrong", arXiv 2202.12565 (2022), and its reference code FAU-LMS/bjontegaard
(``bd_pchip``: "at least 2 supporting points are needed"). This module's
implementation is its own (scipy's ``PchipInterpolator``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

#: bits per stored value of continuous latents (fp16)
LATENT_BITS = 16

#: the rate kinds a row can have, with what each measures
RATE_KINDS = {
    "nominal": "discrete tokens stored as fixed-length codes: tokens x log2(codebook size) bits",
    "entropy": "discrete tokens at the empirical entropy of their indices on the evaluation set: tokens x H(index "
               "histogram) bits, the rate of an ideal memoryless entropy coder (at most the nominal rate)",
    f"uncompressed fp{LATENT_BITS}": f"continuous latents stored uncompressed: latent values per video x {LATENT_BITS} "
                                     f"bits (fp{LATENT_BITS})",
    "bitstream": "a classical codec's encoded bitstream: 8 x bytes, container overhead excluded",
}

#: fewest points of a curve for :func:`bd_rate` (PCHIP through 2 points is the straight line between them; the
#: classic BD-rate's cubic polynomial needs 4)
MIN_BD_POINTS = 2


class BitsPerPixel:
    """The ``bpp`` column: bits a tokenizer keeps per pixel of a video (see the module docstring for the kinds).

    Not a :class:`metrics.base.VideoMetric` (it compares no videos: the
    reconstruct stage measures it, :func:`rate_summary`) and not registered as
    one; reports read its metadata here (:func:`rate_spec`), as they read a
    metric's class attributes.
    """

    name = "bpp"
    title = "bpp"
    unit = "bits/pixel"
    #: fewer bits at the same quality is better
    higher_is_better = False
    #: significant digits shown (bpp spans orders of magnitude: 1e-4 for VideoFlexTok at budget 1, 0.5 for a VAE)
    digits = 4
    per_video = False
    min_comparable_n = None
    table = "rate"
    definition = ("bits per video / (frames x height x width), bits counted over every chunk and at the row's token "
                  "budget; the kind says which bits: " + "; ".join(f"{kind}: {text}" for kind, text in RATE_KINDS.items()))
    comparability = ("kinds are different quantities: rows of one kind compare as equals; nominal and uncompressed "
                     "rates are sizes before entropy coding (upper bounds), entropy an ideal memoryless coder's rate, "
                     "bitstream a real codec's file")

    @classmethod
    def protocol(cls) -> dict[str, Any]:
        """The rate's definition as the protocol card and the records state it."""
        return {"title": cls.title, "unit": cls.unit, "definition": cls.definition, "comparability": cls.comparability,
                "latent_bits": LATENT_BITS}


def rate_spec():
    """:class:`harness_core.registry.MetricSpec` of :class:`BitsPerPixel` (axis label, header, direction)."""
    from harness_core.registry import spec_of

    return spec_of(BitsPerPixel, BitsPerPixel.name)


def format_bpp(value: float) -> str:
    """``value`` with :attr:`BitsPerPixel.digits` significant digits."""
    return f"{value:.{BitsPerPixel.digits}g}"


def entropy_bits(counts: Sequence[float] | np.ndarray) -> float:
    """Shannon entropy in bits of a histogram (``counts``: non-negative numbers, at least one positive).

    Raises:
        ValueError: negative or non-finite counts, or no positive count.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("index histogram: counts must be finite, non-negative and not all zero")
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))  # 0.0 first: a single code gives -0.0, shown as "-0"


def rate_summary(tokens_per_video: int | None, pixels_per_video: int, videos: int, codebook_size: int | None = None,
                 code_counts: Sequence[float] | None = None, bits: float | None = None,
                 latent_values: int | None = None) -> dict[str, Any] | None:
    """The rate of one row from what its reconstruct stage saw over the evaluation set.

    Args:
        tokens_per_video: tokens of one video over every chunk, at the row's budget (``reconstruct_video``).
        pixels_per_video: frames x height x width of one evaluation clip.
        videos: evaluation videos the totals below cover (> 0).
        codebook_size: ``K`` of a discrete tokenizer (``None`` when continuous).
        code_counts: how often each index occurred over the evaluation set (any order; only the histogram
            counts), for discrete tokens.
        bits: total ``Tokens.bits`` over every row and chunk of the ``videos`` (codecs), else ``None``.
        latent_values: total floating-point latent values over every row and chunk of the ``videos``.

    Returns:
        ``{"bpp", "kind", "bits_per_video", "pixels_per_video"}`` plus, for discrete tokens,
        ``"bpp_entropy"``, ``"entropy_bits_per_token"`` and ``"bits_per_token"`` (``log2 K``); for continuous
        latents ``"latent_values_per_video"`` and ``"bits_per_value"``. ``None`` when nothing gives a rate
        (no bits, no indices with a codebook size, no latent values). The first source that applies wins:
        ``bits``, then indices, then latents.

    Raises:
        ValueError: ``pixels_per_video`` or ``videos`` not positive; a discrete rate without ``tokens_per_video``.
    """
    if pixels_per_video <= 0 or videos <= 0:
        raise ValueError(f"rate: pixels_per_video and videos must be positive, got {pixels_per_video} and {videos}")
    base = {"pixels_per_video": int(pixels_per_video)}
    if bits is not None:
        per_video = float(bits) / videos
        return {"bpp": per_video / pixels_per_video, "kind": "bitstream", "bits_per_video": per_video, **base}
    if codebook_size is not None and code_counts is not None and sum(code_counts) > 0:
        if not tokens_per_video:
            raise ValueError("rate: discrete tokens need tokens_per_video")
        per_token, entropy = math.log2(codebook_size), entropy_bits(code_counts)
        return {"bpp": tokens_per_video * per_token / pixels_per_video, "kind": "nominal",
                "bits_per_video": tokens_per_video * per_token, "bits_per_token": per_token,
                "bpp_entropy": tokens_per_video * entropy / pixels_per_video, "entropy_bits_per_token": entropy, **base}
    if latent_values:
        values = latent_values / videos
        return {"bpp": values * LATENT_BITS / pixels_per_video, "kind": f"uncompressed fp{LATENT_BITS}",
                "bits_per_video": values * LATENT_BITS, "latent_values_per_video": values, "bits_per_value": LATENT_BITS,
                **base}
    return None


def rate_text(rate: dict[str, Any] | None) -> str:
    """A leaderboard cell: ``0.03125 nominal, 0.02871 entropy`` / ``0.5 uncompressed fp16`` / ``0.0213 bitstream``."""
    if not rate or not isinstance(rate.get("bpp"), (int, float)) or not math.isfinite(rate["bpp"]):
        return "–"
    text = f"{format_bpp(rate['bpp'])} {rate.get('kind', '')}".strip()
    entropy = rate.get("bpp_entropy")
    if isinstance(entropy, (int, float)) and math.isfinite(entropy):
        text += f", {format_bpp(entropy)} entropy"
    return text


# ----------------------------------------------------------------------------- BD-rate


@dataclass(frozen=True)
class BDRate:
    """A BD-rate in percent (negative: the test curve needs fewer bits than the anchor at equal quality), or
    ``percent=None`` with the reason it is not available."""

    percent: float | None
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.percent:+.1f}%" if self.percent is not None else f"n/a ({self.reason})"


def _curve(rates: Sequence[float], quality: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(quality, log10 rate)`` sorted by quality, after checking the inputs."""
    r, q = np.asarray(rates, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if r.ndim != 1 or r.shape != q.shape:
        raise ValueError(f"bd_rate: {name} rates and quality must be 1-D of one length, got {r.shape} and {q.shape}")
    if not (np.isfinite(r).all() and np.isfinite(q).all()) or (r <= 0).any():
        raise ValueError(f"bd_rate: {name} rates must be positive and finite and quality finite")
    order = np.argsort(q, kind="stable")
    return q[order], np.log10(r[order])


def bd_rate(anchor_rates: Sequence[float], anchor_quality: Sequence[float],
            test_rates: Sequence[float], test_quality: Sequence[float]) -> BDRate:
    """Bjontegaard delta rate of a test RD curve against an anchor curve (see the module docstring for sources).

    Each curve's ``log10(rate)`` is interpolated as a PCHIP function of quality
    (points sorted by quality); both are integrated exactly over the common
    quality range ``[max of the minima, min of the maxima]``; with ``d`` the
    mean difference (test minus anchor) of log-rate over that range,
    ``BD-rate = (10**d - 1) x 100 %``. The quality's direction does not matter
    (LPIPS, lower is better, works as PSNR does): the rates are compared at
    equal quality values.

    Args:
        anchor_rates, test_rates: rates (any unit, the same for both: bpp here), positive.
        anchor_quality, test_quality: quality at each rate (PSNR in dB, SSIM, LPIPS, VMAF...).

    Returns:
        :class:`BDRate`: the percent, or ``None`` with a reason when a curve has fewer than
        :data:`MIN_BD_POINTS` points, repeats a quality value (log-rate is then no function of quality), or the
        quality ranges do not overlap.

    Raises:
        ValueError: arrays of different lengths, non-positive or non-finite rates, non-finite quality.
    """
    qa, ra = _curve(anchor_rates, anchor_quality, "anchor")
    qt, rt = _curve(test_rates, test_quality, "test")
    if min(len(qa), len(qt)) < MIN_BD_POINTS:
        return BDRate(None, f"fewer than {MIN_BD_POINTS} points")
    if (np.diff(qa) <= 0).any() or (np.diff(qt) <= 0).any():
        return BDRate(None, "repeated quality value")
    low, high = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if not high > low:
        return BDRate(None, "no overlap")
    from scipy.interpolate import PchipInterpolator

    mean_diff = (PchipInterpolator(qt, rt).integrate(low, high) - PchipInterpolator(qa, ra).integrate(low, high)) / (high - low)
    return BDRate(float((10.0 ** mean_diff - 1.0) * 100.0))
