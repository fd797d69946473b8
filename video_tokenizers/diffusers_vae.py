"""Pretrained video VAEs from ``diffusers`` as tokenizers (issue 16, "Pretrained video tokenizers as plugins").

:class:`DiffusersVAE` wraps one of diffusers' video autoencoders; the registered names at the end of this
module (``cogvideox_vae``, ``wan21_vae``, ...) fix the diffusers class and document the default hub id. The
tokens are the *scaled* latent grid ``float32 [B, C, t, h, w]``, scaled exactly as the model's own diffusers
pipeline scales latents for its transformer, one token per latent position.

``diffusers`` is imported lazily (only when such a tokenizer is built), so the rest of the harness never
imports it. Everything below was read off diffusers 0.42.1
(``diffusers/models/autoencoders/*.py`` and ``diffusers/pipelines/*/pipeline_*.py``) and checked by encoding and
decoding tiny randomly initialized models; see ``docs/diffusers_vaes.md`` for the table.

Frame-count rules (the input is padded by repeating its last frame up to the next valid length, recorded in
``Tokens.info["padded_frames"]``, and the reconstruction is cropped back):

* ``AutoencoderKLCogVideoX``: ``1 + 8k``. The causal encoder maps ``1 + 4n`` frames to ``1 + n`` latents, but
  ``_decode`` decodes latent frames in batches of ``num_latent_frames_batch_size = 2`` with the odd one first
  (autoencoder_kl_cogvideox.py, ``_decode``), so an *even* latent count decodes to ``4t`` frames (5 frames ->
  2 latents -> 8 frames). Only odd latent counts (``T = 1 + 8k``; CogVideoX's 49 and 81 frames) round-trip.
* ``AutoencoderKLHunyuanVideo``, ``AutoencoderKLWan`` (2.1 and 2.2): ``1 + 4k`` (Wan: ``_encode`` takes the
  first frame, then chunks of 4; pipeline_wan.py warns unless ``num_frames % 4 == 1``).
* ``AutoencoderKLLTXVideo``: ``1 + 8k`` (``temporal_compression_ratio = patch_size_t * 2**3``).
* ``AutoencoderKLMochi``: ``1 + 6k`` (``_decode`` drops the first ``6 - 1`` decoded frames).
* ``AutoencoderKLCosmos`` (CV8x8x8): ``1 + 8k``.
* ``AutoencoderKLAllegro``: only tiled encode/decode exist (``_encode`` raises ``NotImplementedError`` without
  tiling); tiles are ``kernel = (24, sample_size, sample_size)`` with ``stride = (16, sample_size - 120,
  sample_size - 80)`` and the tiled code covers only whole tiles, so ``T = 24 + 16k`` and ``H, W`` on the tile
  grid (both padded here); 4x temporal compression without a separate first frame (``t = T / 4``).
* ``AutoencoderKLTemporalDecoder`` (SVD): any length; frames are encoded one by one (a 2D encoder) and decoded
  together by the temporal decoder.

Spatial sizes are padded (edge replicate) to a multiple of the spatial compression (or to the Allegro tile
grid) and cropped back; ``Tokens.info["padded_hw"]`` records the padded size.

Latent scaling (``z`` the posterior mode, or a sample with ``sample_posterior=True``):

* CogVideoX, HunyuanVideo, Allegro, SVD: ``z * scaling_factor`` (pipeline_cogvideox.py ``decode_latents`` /
  pipeline_cogvideox_video2video.py ``prepare_latents``; pipeline_hunyuan_video_image2video.py
  ``prepare_latents``; pipeline_allegro.py ``decode_latents``; pipeline_stable_video_diffusion.py
  ``decode_latents``).
* Wan 2.1 / 2.2: ``(z - latents_mean) / latents_std`` with the config's per-channel lists
  (pipeline_wan_video2video.py ``prepare_latents``).
* LTX: ``(z - latents_mean) * scaling_factor / latents_std`` with the model's *buffers* ``vae.latents_mean``,
  ``vae.latents_std`` (pipeline_ltx.py ``_normalize_latents``). Models with ``timestep_conditioning`` (LTX
  0.9.1+) decode with ``temb = decode_timestep`` (default 0.0, no decode noise).
* Mochi: ``(z - latents_mean) * scaling_factor / latents_std`` from the config (pipeline_mochi.py, the
  inverse at decoding).
* Cosmos: ``(z - mean) * sigma_data / std`` with ``latents_mean``/``latents_std`` viewed as
  ``[1, C, F, 1, 1]`` (per channel and latent frame, sliced to ``t``) and ``sigma_data`` from the scheduler
  config (EDMEulerScheduler default 0.5; pipeline_cosmos_video2world.py ``prepare_latents``).
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harness_core.api import Tokens, VideoTokenizer, check_video
from harness_core.errors import WeightsError
from harness_core.registry import register_tokenizer

#: ``torch_dtype`` names accepted by :class:`DiffusersVAE`.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------
# Per-class facts (diffusers 0.42.1)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VAEFamily:
    """What the wrapper needs to know about one diffusers autoencoder class.

    Attributes:
        frames: the frame rule: ``"causal"`` (``1 + r k``), ``"causal_batched"`` (``1 + r b k`` with ``b`` the
            decoder's latent frame batch, CogVideoX), ``"allegro"`` (whole temporal tiles), ``"any"``.
        scaling: ``"factor"``, ``"mean_std"``, ``"mean_std_factor"``, ``"ltx"`` or ``"cosmos"`` (module docstring).
        tiling: ``enable_tiling`` can be switched on and off and changes the computation (spatial tiles).
        frame_rule: the rule in words, with its source.
        scaling_rule: the scaling in words, with its source.
    """

    frames: str
    scaling: str
    tiling: bool
    frame_rule: str
    scaling_rule: str


_AE = "diffusers/models/autoencoders/"
_PIPE = "diffusers/pipelines/"

FAMILIES: dict[str, VAEFamily] = {
    "AutoencoderKLCogVideoX": VAEFamily(
        "causal_batched", "factor", True,
        f"1 + 8k: causal 4x encoder, decoder in latent batches of 2 (odd first) ({_AE}autoencoder_kl_cogvideox.py _decode)",
        f"z * scaling_factor ({_PIPE}cogvideo/pipeline_cogvideox_video2video.py prepare_latents)"),
    "AutoencoderKLHunyuanVideo": VAEFamily(
        "causal", "factor", True,
        f"1 + 4k ({_AE}autoencoder_kl_hunyuan_video.py; {_PIPE}hunyuan_video/pipeline_hunyuan_video.py prepare_latents)",
        f"z * scaling_factor ({_PIPE}hunyuan_video/pipeline_hunyuan_video_image2video.py prepare_latents)"),
    "AutoencoderKLWan": VAEFamily(
        "causal", "mean_std", True,
        f"1 + 4k: first frame, then chunks of 4 ({_AE}autoencoder_kl_wan.py _encode; {_PIPE}wan/pipeline_wan.py check)",
        f"(z - latents_mean) / latents_std ({_PIPE}wan/pipeline_wan_video2video.py prepare_latents)"),
    "AutoencoderKLLTXVideo": VAEFamily(
        "causal", "ltx", True,
        f"1 + 8k ({_AE}autoencoder_kl_ltx.py temporal_compression_ratio; {_PIPE}ltx/pipeline_ltx.py prepare_latents)",
        f"(z - vae.latents_mean) * scaling_factor / vae.latents_std ({_PIPE}ltx/pipeline_ltx.py _normalize_latents)"),
    "AutoencoderKLMochi": VAEFamily(
        "causal", "mean_std_factor", True,
        f"1 + 6k: the decoder drops its first 5 frames ({_AE}autoencoder_kl_mochi.py _decode)",
        f"(z - latents_mean) * scaling_factor / latents_std ({_PIPE}mochi/pipeline_mochi.py, inverse at decoding)"),
    "AutoencoderKLCosmos": VAEFamily(
        "causal", "cosmos", False,
        f"1 + 8k ({_AE}autoencoder_kl_cosmos.py; {_PIPE}cosmos/pipeline_cosmos_video2world.py prepare_latents)",
        f"(z - mean[c, t]) * sigma_data / std[c, t] ({_PIPE}cosmos/pipeline_cosmos_video2world.py prepare_latents)"),
    "AutoencoderKLAllegro": VAEFamily(
        "allegro", "factor", False,
        f"T = kernel_t + stride_t k (24 + 16k by default), H, W on the tile grid: only tiled encode/decode exist ({_AE}autoencoder_kl_allegro.py)",
        f"z * scaling_factor ({_PIPE}allegro/pipeline_allegro.py decode_latents)"),
    "AutoencoderKLTemporalDecoder": VAEFamily(
        "any", "factor", False,
        f"any: per-frame 2D encoder, temporal decoder ({_AE}autoencoder_kl_temporal_decoder.py)",
        f"z * scaling_factor ({_PIPE}stable_video_diffusion/pipeline_stable_video_diffusion.py decode_latents)"),
}


def _diffusers():
    """``import diffusers`` (only here: the harness must not import it unless a diffusers VAE is built)."""
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - diffusers is a dependency
        raise ImportError(f"the diffusers VAE tokenizers need `diffusers` (pip install 'diffusers>=0.35'): {err}") from err
    return diffusers


def _one_line(text: Any, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _round_up(value: int, first: int, step: int) -> int:
    """Smallest ``first + step * k >= value`` (``k >= 0``)."""
    if value <= first:
        return first
    return first + step * math.ceil((value - first) / step)


def _pad_video(video: Tensor, frames: int, height: int, width: int) -> Tensor:
    """Pad ``[B, C, T, H, W]`` to ``frames x height x width`` by repeating the last frame, row and column."""
    b, c, t, h, w = video.shape
    if frames > t:
        video = torch.cat([video, video[:, :, -1:].expand(b, c, frames - t, h, w)], dim=2)
    if height > h or width > w:
        video = F.pad(video, (0, width - w, 0, height - h, 0, 0), mode="replicate")
    return video


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------

@register_tokenizer("diffusers_vae")
class DiffusersVAE(VideoTokenizer):
    """A pretrained diffusers video autoencoder as a continuous, evaluation-only tokenizer.

    Args:
        model_class: the diffusers class name, one of :data:`FAMILIES` (``"AutoencoderKLCogVideoX"``, ...).
        pretrained: a local folder (``from_pretrained`` on it; never downloads; the first of ``folder/subfolder``,
            ``folder`` and ``folder/<default_subfolder>`` holding a ``config.json`` is loaded) or a hub id (loaded from the local
            Hugging Face cache first; downloaded only when ``HF_HUB_OFFLINE`` is not set). ``None``: the named
            entry's ``default_pretrained``, or a random model when ``config`` is given.
        subfolder, revision, variant: passed to ``from_pretrained`` (``revision`` only for hub ids).
        torch_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``: the dtype the VAE runs in. Inputs, outputs and
            ``Tokens.latents`` stay ``float32``.
        config: a config dict: build a randomly initialized ``Class.from_config(config)`` (tests) when
            ``pretrained`` is ``None``.
        tiling: ``False``, ``True`` (diffusers' default tiles) or a dict of ``enable_tiling`` keyword arguments
            (``{"tile_sample_min_height": 16, ...}``, read the class's ``enable_tiling``). For Allegro, whose
            diffusers code only tiles, a dict ``{"kernel": (t, h, w), "stride": (t, h, w)}`` (sample space) sets
            the tiles; ``False``/``True`` keep diffusers' tiles.
        slicing: ``enable_slicing`` (one video of the batch at a time).
        sample_posterior: encode a posterior sample instead of its mode (the pipelines' reconstruction default is
            the mode, ``sample_mode="argmax"``).
        chunk_frames: ``None`` (default): whole videos in one piece; else the engine's chunk length.
        decode_timestep: LTX models with ``timestep_conditioning``: the decoder timestep (pipeline_ltx.py
            ``decode_timestep``, default 0.0); no decode noise is added.
        sigma_data: Cosmos: the scheduler's ``sigma_data`` used in the latent normalization (0.5, EDMEulerScheduler).
        decode_chunk_size: SVD: frames decoded together (``None``: the whole video; pipeline_stable_video_diffusion.py).

    Raises:
        ValueError: unknown ``model_class``, bad ``torch_dtype``, unsupported tiling/slicing, bad kwargs.
        WeightsError: the weights cannot be loaded (one line saying how to pass a local folder).
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "pretrained weights through diffusers, evaluation only (docs/diffusers_vaes.md)"

    continuous = True
    #: the diffusers class fixed by a registered name (``None``: given as ``model_class``)
    model_class: str | None = None
    #: the hub id loaded when neither ``pretrained`` nor ``config`` is given, and its subfolder
    default_pretrained: str | None = None
    default_subfolder: str | None = "vae"

    def __init__(self, model_class: str | None = None, pretrained: str | os.PathLike | None = None,
                 subfolder: str | None = None, revision: str | None = None, variant: str | None = None,
                 torch_dtype: str = "float32", config: dict[str, Any] | None = None,
                 tiling: bool | dict[str, Any] = False, slicing: bool = False, sample_posterior: bool = False,
                 chunk_frames: int | None = None, decode_timestep: float = 0.0, sigma_data: float = 0.5,
                 decode_chunk_size: int | None = None) -> None:
        super().__init__()
        fixed = type(self).model_class
        if fixed is not None and model_class not in (None, fixed):
            raise ValueError(f"{type(self).__name__} wraps {fixed}; got model_class={model_class!r} (use diffusers_vae for another class)")
        name = fixed or model_class
        if not name:
            raise ValueError(f"diffusers_vae needs model_class, one of: {', '.join(FAMILIES)}")
        if name not in FAMILIES:
            raise ValueError(f"unknown or unsupported diffusers video VAE model_class {name!r}; supported: {', '.join(FAMILIES)}")
        if torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {', '.join(DTYPES)}, got {torch_dtype!r}")
        if chunk_frames is not None and (not isinstance(chunk_frames, int) or chunk_frames < 1):
            raise ValueError(f"chunk_frames must be a positive int or None, got {chunk_frames!r}")
        if decode_chunk_size is not None and decode_chunk_size < 1:
            raise ValueError(f"decode_chunk_size must be positive, got {decode_chunk_size}")
        if config is not None and pretrained is not None:
            raise ValueError("give either pretrained (weights) or config (random initialization), not both")
        self.family = FAMILIES[name]
        self.model_class_name = name
        self.chunk_frames = chunk_frames
        self.torch_dtype = torch_dtype
        self.sample_posterior = bool(sample_posterior)
        self.decode_timestep = float(decode_timestep)
        self.sigma_data = float(sigma_data)
        self.decode_chunk_size = decode_chunk_size
        self.slicing = bool(slicing)
        if pretrained is None and config is None:
            pretrained = self.default_pretrained
            if pretrained is None:
                raise ValueError(f"{type(self).__name__}: give pretrained (a local folder or hub id) or config")
        if subfolder is None and pretrained is not None and pretrained == self.default_pretrained:
            subfolder = self.default_subfolder
        self.pretrained = None if pretrained is None else str(pretrained)
        self.subfolder = subfolder
        self.revision = revision
        self.variant = variant
        self._weights_folder: Path | None = None
        self._sha256: dict[str, str] | None = None

        cls = getattr(_diffusers(), name)
        dtype = DTYPES[torch_dtype]
        if config is not None:
            vae = cls.from_config(dict(config)).to(dtype)
        else:
            vae = self._load(cls, dtype)
        vae.eval().requires_grad_(False)
        self.vae = vae
        self._check_variant()

        # tiling and slicing
        self._tile_kwargs: dict[str, Any] = {}
        self.tiling = tiling
        if name == "AutoencoderKLAllegro":
            self._setup_allegro_tiles(tiling)
        elif tiling:
            if not self.family.tiling:
                raise ValueError(f"{name} has no switchable tiling in diffusers 0.42.1 (tiling={tiling!r})")
            self._tile_kwargs = dict(tiling) if isinstance(tiling, dict) else {}
            self.set_tiling(True)
        if self.slicing:
            if not hasattr(vae, "use_slicing"):
                raise ValueError(f"{name} has no slicing in diffusers 0.42.1 (slicing=True)")
            vae.enable_slicing()

    # ---------------------------------------------------------------- loading
    def _load(self, cls: Any, dtype: torch.dtype) -> Any:
        source = self.pretrained
        path = Path(source).expanduser()
        common = {"torch_dtype": dtype, "variant": self.variant}
        if path.is_dir():
            candidates = [path / self.subfolder] if self.subfolder else []
            candidates += [path] + ([path / self.default_subfolder] if self.default_subfolder else [])
            folder = next((c for c in candidates if (c / "config.json").is_file()), path)
            if not (folder / "config.json").is_file():
                where = f"{path}/{self.subfolder}" if self.subfolder else str(path)
                raise WeightsError(f"{where}: no config.json of a diffusers {self.model_class_name} "
                                   f"(point pretrained at the folder holding the VAE's config.json and weights)")
            try:
                vae = cls.from_pretrained(str(folder), local_files_only=True, **common)
            except Exception as err:  # noqa: BLE001 - reported as one line
                raise WeightsError(f"{folder}: cannot load {self.model_class_name} weights: {_one_line(err)}") from None
            self._weights_folder = folder
            return vae
        if _looks_like_path(source):
            raise WeightsError(f"pretrained folder {source!r} does not exist (give a local folder or a hub id owner/name)")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            raise WeightsError(f"pretrained {source!r} is neither an existing folder nor a hub id (owner/name)")
        kwargs = dict(common, subfolder=self.subfolder, revision=self.revision)
        try:
            vae = cls.from_pretrained(source, local_files_only=True, **kwargs)
        except Exception as first:  # noqa: BLE001 - not in the local cache
            reason = "HF_HUB_OFFLINE is set and it is not in the local cache" if _offline() else None
            if reason is None:
                try:
                    vae = cls.from_pretrained(source, local_files_only=False, **kwargs)
                except Exception as err:  # noqa: BLE001
                    reason = _one_line(err, 160)
            if reason is not None:
                raise WeightsError(self._unreachable(source, reason)) from None
            del first
        self._weights_folder = self._cache_folder(source)
        return vae

    def _unreachable(self, source: str, reason: str) -> str:
        short = source.split("/")[-1]
        sub = f" (subfolder {self.subfolder})" if self.subfolder else ""
        local = f"/path/to/{short}" + (f"/{self.subfolder}" if self.subfolder else "")
        return (f"cannot load {self.model_class_name} weights {source!r}{sub} from the Hugging Face hub or its cache: {reason}; "
                f"download them once (`huggingface-cli download {source} --local-dir /path/to/{short}`) "
                f"and pass the local folder: `pretrained: {local}`")

    def _cache_folder(self, source: str) -> Path | None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            return None
        filename = f"{self.subfolder}/config.json" if self.subfolder else "config.json"
        found = try_to_load_from_cache(source, filename, revision=self.revision)
        return Path(found).parent if isinstance(found, str) else None

    def _check_variant(self) -> None:
        """Wan 2.1 vs 2.2: the same diffusers class with different configs; refuse the wrong one."""
        want = getattr(type(self), "wan_patch_size", "any")
        if want != "any" and self.vae.config.get("patch_size") != want:
            other = "wan22_vae" if want is None else "wan21_vae"
            raise ValueError(f"{type(self).__name__}: the loaded AutoencoderKLWan has patch_size="
                             f"{self.vae.config.get('patch_size')!r}, expected {want!r}; use {other} (or diffusers_vae)")

    # ---------------------------------------------------------------- tiling
    def _setup_allegro_tiles(self, tiling: bool | dict[str, Any]) -> None:
        vae = self.vae
        if isinstance(tiling, dict):
            unknown = set(tiling) - {"kernel", "stride"}
            if unknown:
                raise ValueError(f"Allegro tiling takes {{'kernel': (t, h, w), 'stride': (t, h, w)}}, got keys {sorted(unknown)}")
            vae.kernel = tuple(int(v) for v in tiling.get("kernel", vae.kernel))
            vae.stride = tuple(int(v) for v in tiling.get("stride", vae.stride))
        rt, rs = self.temporal_ratio, self.spatial_ratio
        for axis, k, s, r in zip("thw", vae.kernel, vae.stride, (rt, rs, rs)):
            if s <= 0 or s > k or k % r or s % r:
                raise ValueError(f"Allegro tile {axis}: kernel {k} and stride {s} must satisfy 0 < stride <= kernel, both multiples of {r}")
        vae.enable_tiling()  # diffusers implements only the tiled path
        vae.enable_slicing()  # ... and its tiled_encode/tiled_decode handle one video at a time (batch 1 tile buffers)

    @property
    def supports_tiling(self) -> bool:
        """Whether tiling can be switched on and off (what :func:`harness.chunks.tiling_consistency` needs)."""
        return self.family.tiling

    @property
    def tiling_enabled(self) -> bool:
        return bool(getattr(self.vae, "use_tiling", False))

    def set_tiling(self, on: bool) -> None:
        """Switch diffusers' spatial tiling on (with this tokenizer's tile settings) or off.

        Raises:
            ValueError: the class has no switchable tiling.
        """
        if not self.supports_tiling:
            raise ValueError(f"{self.model_class_name} has no switchable tiling in diffusers 0.42.1")
        if on:
            self.vae.enable_tiling(**self._tile_kwargs)
        else:
            self.vae.disable_tiling()

    # ---------------------------------------------------------------- geometry
    @property
    def latent_channels(self) -> int:
        """Channels ``C`` of the latent grid."""
        config = self.vae.config
        return int(config.get("z_dim") or config.get("latent_channels"))

    @property
    def temporal_ratio(self) -> int:
        """Temporal compression (latent frames per sample frames after the first, 1 for SVD)."""
        vae, name = self.vae, self.model_class_name
        if name == "AutoencoderKLWan":
            return 2 ** sum(bool(v) for v in vae.config.temperal_downsample)
        if name == "AutoencoderKLTemporalDecoder":
            return 1
        if name in ("AutoencoderKLCogVideoX", "AutoencoderKLCosmos", "AutoencoderKLAllegro"):
            return int(vae.config.temporal_compression_ratio)
        return int(vae.temporal_compression_ratio)

    @property
    def spatial_ratio(self) -> int:
        """Spatial compression per side."""
        vae, name = self.vae, self.model_class_name
        if name in ("AutoencoderKLCogVideoX", "AutoencoderKLTemporalDecoder"):
            return 2 ** (len(vae.config.block_out_channels) - 1)
        if name == "AutoencoderKLCosmos":
            return int(vae.config.spatial_compression_ratio)
        return int(vae.spatial_compression_ratio)

    def padded_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The ``(T, H, W)`` a ``frames x height x width`` video is padded to before encoding.

        Raises:
            ValueError: a non-positive size.
        """
        if min(frames, height, width) < 1:
            raise ValueError(f"video size must be positive, got {frames}x{height}x{width}")
        kind, r, s = self.family.frames, self.temporal_ratio, self.spatial_ratio
        if kind == "allegro":
            (kt, kh, kw), (st, sh, sw) = self.vae.kernel, self.vae.stride
            return _round_up(frames, kt, st), _round_up(height, kh, sh), _round_up(width, kw, sw)
        if kind == "causal":
            frames = _round_up(frames, 1, r)
        elif kind == "causal_batched":
            frames = _round_up(frames, 1, r * int(self.vae.num_latent_frames_batch_size))
        return frames, s * math.ceil(height / s), s * math.ceil(width / s)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent grid ``(t, h, w)`` of one ``frames x height x width`` piece (after padding)."""
        t, h, w = self.padded_size(frames, height, width)
        s = self.spatial_ratio
        if self.family.frames == "allegro":
            return t // self.temporal_ratio, h // s, w // s
        if self.family.frames == "any":
            return t, h // s, w // s
        return (t - 1) // self.temporal_ratio + 1, h // s, w // s

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        """Latent positions ``t * h * w`` of a video, summed over the engine's chunks when ``chunk_frames`` is set."""
        chunk = self.chunk_frames or frames
        t, h, w = self.latent_shape(chunk, height, width)
        return -(-frames // chunk) * t * h * w

    def _internal_starts(self, frames: int) -> list[int]:
        """Temporal tile starts (after 0) inside one padded piece of ``frames`` frames."""
        vae, name = self.vae, self.model_class_name
        if name == "AutoencoderKLHunyuanVideo" and vae.use_framewise_encoding and frames > vae.tile_sample_min_num_frames:
            stride = int(vae.tile_sample_stride_num_frames)
            return list(range(stride, frames, stride))
        if name == "AutoencoderKLAllegro":
            kt, st = vae.kernel[0], vae.stride[0]
            return [i * st for i in range(1, (frames - kt) // st + 1)]
        if name == "AutoencoderKLTemporalDecoder" and self.decode_chunk_size:
            return list(range(self.decode_chunk_size, frames, self.decode_chunk_size))
        return []

    def temporal_boundaries(self, frames: int) -> list[int]:
        """First frames of independently coded pieces after the first: the engine's chunks and temporal tiles.

        Temporal tiles exist for HunyuanVideo (diffusers' framewise coding, on by default: tiles every
        ``tile_sample_stride_num_frames = 12`` frames once a piece has more than 16 frames; tiles overlap and are
        blended), Allegro (its mandatory tiles, every ``stride_t`` frames, blended) and SVD with
        ``decode_chunk_size``. CogVideoX and Wan code frames in causal chunks *with* a feature cache (no
        independent pieces), LTX's temporal tiling is off in diffusers unless its private framewise flags are set,
        Mochi and Cosmos code a piece at once: ``[]``.
        """
        chunk = self.chunk_frames or frames
        padded = self.padded_size(chunk, 1, 1)[0]
        inner = [0] + self._internal_starts(padded)
        return sorted({start + b for start in range(0, frames, chunk) for b in inner if 0 < start + b < frames})

    # ---------------------------------------------------------------- scaling
    def _stats(self, t: int, device: torch.device) -> tuple[Tensor | float, Tensor | float, float]:
        """``(mean, std, factor)`` such that ``scaled = (z - mean) * factor / std``."""
        vae, kind, c = self.vae, self.family.scaling, self.latent_channels
        config = vae.config

        def table(values: Any, frames: bool = False) -> Tensor:
            tensor = torch.as_tensor(values, dtype=torch.float32, device=device)
            return tensor.view(1, c, -1, 1, 1) if frames else tensor.view(1, c, 1, 1, 1)

        if kind == "factor":
            return 0.0, 1.0, float(config.scaling_factor)
        if kind == "mean_std":
            return table(config.latents_mean), table(config.latents_std), 1.0
        if kind == "mean_std_factor":
            if config.get("latents_mean") is None or config.get("latents_std") is None:
                return 0.0, 1.0, float(config.scaling_factor)
            return table(config.latents_mean), table(config.latents_std), float(config.scaling_factor)
        if kind == "ltx":
            return table(vae.latents_mean), table(vae.latents_std), float(config.scaling_factor)
        if kind == "cosmos":
            if config.get("latents_mean") is None:
                return 0.0, 1.0, self.sigma_data
            mean, std = table(config.latents_mean, True), table(config.latents_std, True)
            if t > mean.shape[2]:
                raise ValueError(f"Cosmos latents_mean/std cover {mean.shape[2]} latent frames "
                                 f"({1 + self.temporal_ratio * (mean.shape[2] - 1)} frames), got {t} latent frames; "
                                 f"set chunk_frames <= {1 + self.temporal_ratio * (mean.shape[2] - 1)}")
            return mean[:, :, :t], std[:, :, :t], self.sigma_data
        raise AssertionError(kind)

    def scale_latents(self, z: Tensor) -> Tensor:
        """Raw VAE latents ``[B, C, t, h, w]`` -> the pipeline's scaled latents (float32)."""
        mean, std, factor = self._stats(z.shape[2], z.device)
        return (z.float() - mean) * factor / std

    def unscale_latents(self, latents: Tensor) -> Tensor:
        """Inverse of :meth:`scale_latents` (float32)."""
        mean, std, factor = self._stats(latents.shape[2], latents.device)
        return latents.float() * std / factor + mean

    # ---------------------------------------------------------------- encode / decode
    @property
    def _param(self) -> Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        """Encode ``video`` ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` into the scaled latent grid.

        Returns:
            :class:`Tokens` with ``latents`` ``float32 [B, C, t, h, w]``, ``tokens_per_video = t * h * w`` and ``info``
            ``{"shape": (T, H, W), "padded_frames": int, "padded_hw": (H', W')}``.

        Raises:
            ValueError: bad video, or a ``budget`` other than the fixed one.
        """
        check_video(video)
        frames, height, width = video.shape[2:]
        pt, ph, pw = self.padded_size(frames, height, width)
        param = self._param
        x = _pad_video(video, pt, ph, pw).to(device=param.device, dtype=param.dtype)
        if self.model_class_name == "AutoencoderKLTemporalDecoder":
            b = x.shape[0]
            flat = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
            z = self._posterior(self.vae.encode(flat).latent_dist)
            z = z.unflatten(0, (b, pt)).permute(0, 2, 1, 3, 4)
        else:
            z = self._posterior(self.vae.encode(x).latent_dist)
        latents = self.scale_latents(z)
        count = int(latents.shape[2] * latents.shape[3] * latents.shape[4])
        if budget is not None and budget != count:
            raise ValueError(f"{self.model_class_name} has a fixed budget of {count} tokens for this size, got budget={budget}")
        info = {"shape": (frames, height, width), "padded_frames": pt - frames, "padded_hw": (ph, pw)}
        return Tokens(latents=latents, tokens_per_video=count, info=info)

    def _posterior(self, dist: Any) -> Tensor:
        return dist.sample() if self.sample_posterior else dist.mode()

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> Tensor:
        """Reconstruct ``float32 [B, 3, T, H, W]``, clamped to ``[-1, 1]`` and cropped to ``info["shape"]``."""
        param = self._param
        z = self.unscale_latents(tokens.latents.to(param.device)).to(param.dtype)
        vae, name = self.vae, self.model_class_name
        if name == "AutoencoderKLTemporalDecoder":
            video = torch.stack([self._decode_svd(row) for row in z])
        elif name == "AutoencoderKLLTXVideo" and vae.config.get("timestep_conditioning"):
            temb = torch.full((z.shape[0],), self.decode_timestep, device=z.device, dtype=z.dtype)
            video = vae.decode(z, temb).sample
        else:
            video = vae.decode(z).sample
            if name == "AutoencoderKLAllegro":  # tiled_decode returns [B, T, C, H, W] (pipeline_allegro.py permutes back)
                video = video.permute(0, 2, 1, 3, 4)
        frames, height, width = tokens.info.get("shape", video.shape[2:])
        return video[:, :, :frames, :height, :width].float().clamp(-1, 1)

    def _decode_svd(self, z: Tensor) -> Tensor:
        """One video's latents ``[C, T, h, w]`` -> ``[3, T, H, W]``, ``decode_chunk_size`` frames at a time."""
        flat = z.permute(1, 0, 2, 3)
        chunk = self.decode_chunk_size or flat.shape[0]
        parts = [self.vae.decode(part, num_frames=part.shape[0]).sample for part in flat.split(chunk)]
        return torch.cat(parts).permute(1, 0, 2, 3)

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """Not available: pretrained diffusers VAEs are evaluation-only in this harness.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(f"{type(self).__name__} ({self.model_class_name}) is a pretrained, evaluation-only "
                                  f"tokenizer; it has no training losses (drop the train stage for it)")

    # ---------------------------------------------------------------- provenance
    def weights_identity(self) -> dict[str, Any]:
        """``{"source", "revision", "subfolder", "sha256": {file: hash}}`` of the loaded weights.

        ``sha256`` covers every ``*.safetensors`` / ``*.bin`` file of the folder the weights were loaded from
        (empty for a randomly initialized model; computed once, then cached).
        """
        if self._sha256 is None:
            hashes: dict[str, str] = {}
            folder = self._weights_folder
            if folder is not None and folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.suffix in (".safetensors", ".bin") and path.is_file():
                        hashes[path.name] = _sha256(path.resolve())
            self._sha256 = hashes
        return {"source": self.pretrained or "random initialization (config)", "revision": self.revision,
                "subfolder": self.subfolder, "sha256": dict(self._sha256)}

    def protocol(self) -> dict[str, Any]:
        """The settings behind the reconstructions, recorded with results."""
        identity = self.weights_identity()
        tiling = self.tiling if not isinstance(self.tiling, dict) else dict(self.tiling)
        if self.model_class_name == "AutoencoderKLAllegro":
            tiling = {"kernel": list(self.vae.kernel), "stride": list(self.vae.stride), "note": "always tiled"}
        return {
            "tokenizer": getattr(type(self), "registry_name", type(self).__name__),
            "model_class": self.model_class_name,
            "pretrained": identity["source"],
            "revision": self.revision,
            "subfolder": self.subfolder,
            "variant": self.variant,
            "torch_dtype": self.torch_dtype,
            "tiling": tiling,
            "slicing": self.slicing,
            "sample_posterior": self.sample_posterior,
            "chunk_frames": self.chunk_frames,
            "frame_rule": self.family.frame_rule,
            "latent_scaling": self.family.scaling_rule,
            "compression": f"{self.temporal_ratio}x{self.spatial_ratio}x{self.spatial_ratio}",
            "latent_channels": self.latent_channels,
            "weights_sha256": identity["sha256"],
            "diffusers_version": _diffusers().__version__,
        }


# --------------------------------------------------------------------------------------------------
# Registered names
# --------------------------------------------------------------------------------------------------

@register_tokenizer("cogvideox_vae")
class CogVideoXVAE(DiffusersVAE):
    """CogVideoX VAE, 4x8x8, 16 channels, ``1 + 8k`` frames (49 = 1 + 8*6); default ``THUDM/CogVideoX-2b``/vae."""

    model_class = "AutoencoderKLCogVideoX"
    default_pretrained = "THUDM/CogVideoX-2b"


@register_tokenizer("hunyuanvideo_vae")
class HunyuanVideoVAE(DiffusersVAE):
    """HunyuanVideo VAE, 4x8x8, 16 channels, ``1 + 4k``; default ``hunyuanvideo-community/HunyuanVideo``/vae."""

    model_class = "AutoencoderKLHunyuanVideo"
    default_pretrained = "hunyuanvideo-community/HunyuanVideo"


@register_tokenizer("wan21_vae")
class Wan21VAE(DiffusersVAE):
    """Wan 2.1 VAE, 4x8x8, 16 channels, ``1 + 4k``; default ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``/vae."""

    model_class = "AutoencoderKLWan"
    default_pretrained = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    wan_patch_size = None


@register_tokenizer("wan22_vae")
class Wan22VAE(DiffusersVAE):
    """Wan 2.2 VAE (``AutoencoderKLWan`` with ``patch_size=2``, ``is_residual=True``, ``z_dim=48``,
    ``scale_factor_spatial=16``): 4x16x16, 48 channels, ``1 + 4k``; default ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``/vae
    (the TI2V-5B model is the one that uses this VAE; the A14B models use the Wan 2.1 VAE)."""

    model_class = "AutoencoderKLWan"
    default_pretrained = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    wan_patch_size = 2


@register_tokenizer("ltx_vae")
class LTXVideoVAE(DiffusersVAE):
    """LTX-Video VAE, 8x32x32, 128 channels, ``1 + 8k``; default ``Lightricks/LTX-Video``/vae."""

    model_class = "AutoencoderKLLTXVideo"
    default_pretrained = "Lightricks/LTX-Video"


@register_tokenizer("mochi_vae")
class MochiVAE(DiffusersVAE):
    """Mochi 1 VAE, 6x8x8, 12 channels, ``1 + 6k``; default ``genmo/mochi-1-preview``/vae."""

    model_class = "AutoencoderKLMochi"
    default_pretrained = "genmo/mochi-1-preview"


@register_tokenizer("cosmos_cv8x8x8")
class CosmosCV8x8x8(DiffusersVAE):
    """Cosmos-1.0 continuous tokenizer CV8x8x8, 16 channels, ``1 + 8k`` (at most 121 frames per piece with the
    released latents_mean/std); default ``nvidia/Cosmos-1.0-Diffusion-7B-Text2World``/vae."""

    model_class = "AutoencoderKLCosmos"
    default_pretrained = "nvidia/Cosmos-1.0-Diffusion-7B-Text2World"


@register_tokenizer("allegro_vae")
class AllegroVAE(DiffusersVAE):
    """Allegro VAE, 4x8x8, 4 channels, always tiled (``24 + 16k`` frames by default); default ``rhymes-ai/Allegro``/vae."""

    model_class = "AutoencoderKLAllegro"
    default_pretrained = "rhymes-ai/Allegro"


@register_tokenizer("svd_temporal_vae")
class SVDTemporalVAE(DiffusersVAE):
    """Stable Video Diffusion VAE (2D encoder, temporal decoder), 1x8x8, 4 channels, any length; default
    ``stabilityai/stable-video-diffusion-img2vid-xt``/vae."""

    model_class = "AutoencoderKLTemporalDecoder"
    default_pretrained = "stabilityai/stable-video-diffusion-img2vid-xt"
