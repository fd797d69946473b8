"""SiT: scalable interpolant transformers over tokenizer latents.

DiT blocks with adaLN-Zero conditioning on the timestep and the class
(Peebles and Xie, DiT, section 3.2; SiT, Ma et al. 2024, uses the same
backbone; :class:`harness_core.layers.AdaLNZeroBlock` in the ``"dit"``
layout), sizes S/B/L/XL with patch 2/4/8 (SiT Table 1 / DiT Table 1), plus
a ``tiny`` size for CPU tests; the presets ``sit_<size>_<patch>``
(``sit_XL_2``) are registered in :data:`harness_core.registry.PRESETS`.

The latents of a tokenizer reach the transformer through a *layout adapter*:

* :class:`TriplaneAdapter` (CoordTok-SiT, CoordTok supplementary A.2 and
  Table 6): a dict of planes ``{"xy": [C, H, W], "xt": [C, T, W], "yt":
  [C, T, H]}``, one Conv2d patch embedding per plane, fixed 2D sin-cos
  positions for ``xy``, one learnable temporal position embedding (zero
  init) shared by the two time planes, a learnable type embedding
  ``(1, planes, D)``, the tokens concatenated into one sequence, and one
  final layer per plane.
* :class:`GridAdapter`: a 3D latent grid ``[C, t, h, w]`` (grid3d, clip
  latents stacked in time) with a Conv3d patch embedding of
  ``(patch_t, patch, patch)``, fixed 3D sin-cos positions and one final layer.

Blocks, then the model, then the size table and presets (DiT ``models.py`` order).
"""
from __future__ import annotations

import math
import torch
from einops import rearrange
from torch import Tensor, nn

from harness_core.api import Latents
from harness.generation.tree import tree_cat, tree_map, tree_split
from harness_core.registry import SizeConfig, register_generator, register_preset
from harness_core.layers import AdaLNFinalLayer, AdaLNZeroBlock, TimestepEmbedder, sincos_pos_embed


# --------------------------------------------------------------------------- embeddings


class LabelEmbedder(nn.Module):
    """Class labels ``int64 [B]`` -> ``[B, dim]``; an extra "null" row when ``dropout > 0``.

    During training each label is replaced by the null class with probability
    ``dropout`` (classifier-free guidance, DiT section 3.2). The null class
    index is ``num_classes``.
    """

    def __init__(self, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.table = nn.Embedding(num_classes + int(dropout > 0), dim)

    def forward(self, y: Tensor, train: bool) -> Tensor:
        if train and self.dropout > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.table(y)


# --------------------------------------------------------------------------- layout adapters


class TriplaneAdapter(nn.Module):
    """Triplane latents (dict of ``[B, C, H_p, W_p]`` planes) <-> one token sequence.

    CoordTok supplementary A.2 / Table 6 (CoordTok-SiT-L/2): the planes are
    patchified separately (one Conv2d per plane), ``xy`` gets fixed 2D sin-cos
    positions, the other planes share one learnable position embedding per
    shape (zero init; CoordTok's ``pos_embed_t`` shared by ``xt`` and ``yt``),
    every plane gets a learnable type embedding, and each plane has its own
    final layer. A plane named ``xy`` is spatial; every other plane is treated
    as a time plane (PVDM-style triplanes reuse the same layout).

    Args:
        shapes: plane name -> ``(C, H_p, W_p)`` of one video.
        dim: transformer width.
        patch: patch size; every plane side must be divisible by it.

    Raises:
        ValueError: when a plane side is not divisible by ``patch`` or a plane is not 3-D.
    """

    def __init__(self, shapes: dict[str, tuple[int, int, int]], dim: int, patch: int) -> None:
        super().__init__()
        if not shapes:
            raise ValueError("TriplaneAdapter needs at least one plane")
        self.names = list(shapes)
        self.shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self.patch = patch
        self.embed = nn.ModuleDict()
        self.grids: dict[str, tuple[int, int]] = {}
        for name, shape in self.shapes.items():
            if len(shape) != 3:
                raise ValueError(f"plane {name!r}: expected (C, H, W), got {shape}")
            c, h, w = shape
            if h % patch or w % patch:
                raise ValueError(f"plane {name!r} of shape {shape}: sides must be divisible by patch {patch}")
            self.grids[name] = (h // patch, w // patch)
            self.embed[name] = nn.Conv2d(c, dim, kernel_size=patch, stride=patch)
        # positions: fixed sin-cos for "xy", one shared learnable table per time-plane shape
        self.pos_key: dict[str, str] = {}
        self.learned_pos = nn.ParameterDict()
        for name in self.names:
            gh, gw = self.grids[name]
            if name == "xy":
                self.register_buffer("pos_xy", sincos_pos_embed((gh, gw), dim)[None], persistent=False)
                self.pos_key[name] = "xy"
            else:
                key = f"t_{gh}x{gw}"
                if key not in self.learned_pos:
                    self.learned_pos[key] = nn.Parameter(torch.zeros(1, gh * gw, dim))
                self.pos_key[name] = key
        # std 1, as CoordTok-SiT (huiwon-jang/CoordTok 8475272 models/diffusion/sit_models.py SiT.__init__: randn)
        self.type_embed = nn.Parameter(torch.randn(1, len(self.names), dim))
        self.lengths = [gh * gw for gh, gw in self.grids.values()]
        self.final = nn.ModuleDict({k: AdaLNFinalLayer(dim, patch * patch * self.shapes[k][0]) for k in self.names})

    @property
    def num_patches(self) -> int:
        return sum(self.lengths)

    def check(self, x: Latents) -> None:
        if not isinstance(x, dict) or set(x) != set(self.names):
            got = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(f"expected a dict of planes {self.names}, got {got}")
        for name, plane in x.items():
            if tuple(plane.shape[1:]) != self.shapes[name]:
                raise ValueError(f"plane {name!r}: expected [B, {self.shapes[name]}], got {tuple(plane.shape)}")

    def embed_tokens(self, x: dict[str, Tensor]) -> Tensor:
        self.check(x)
        seqs = []
        for i, name in enumerate(self.names):
            tokens = rearrange(self.embed[name](x[name]), "b d h w -> b (h w) d")
            pos = self.pos_xy if self.pos_key[name] == "xy" else self.learned_pos[self.pos_key[name]]
            seqs.append(tokens + pos + self.type_embed[:, i : i + 1])
        return torch.cat(seqs, dim=1)

    def unembed(self, h: Tensor, c: Tensor) -> dict[str, Tensor]:
        out = {}
        for name, part in zip(self.names, h.split(self.lengths, dim=1)):
            gh, gw = self.grids[name]
            values = self.final[name](part, c)
            out[name] = rearrange(values, "b (h w) (p q c) -> b c (h p) (w q)", h=gh, w=gw, p=self.patch, q=self.patch)
        return out

    def zero_init(self) -> None:
        for layer in self.final.values():
            layer.zero_init()


class GridAdapter(nn.Module):
    """3D grid latents ``[B, C, t, h, w]`` <-> tokens, with a Conv3d patch embedding.

    Args:
        shape: ``(C, t, h, w)`` of one video.
        dim: transformer width.
        patch: spatial patch size; ``patch_t``: temporal patch size.

    Raises:
        ValueError: when ``t`` is not divisible by ``patch_t`` or ``h, w`` by ``patch``.
    """

    def __init__(self, shape: tuple[int, int, int, int], dim: int, patch: int, patch_t: int = 1) -> None:
        super().__init__()
        if len(shape) != 4:
            raise ValueError(f"GridAdapter: expected (C, t, h, w), got {shape}")
        c, t, h, w = (int(s) for s in shape)
        if t % patch_t or h % patch or w % patch:
            raise ValueError(f"grid latent {shape}: t must be divisible by patch_t={patch_t}, h and w by patch={patch}")
        self.shape = (c, t, h, w)
        self.patch, self.patch_t = patch, patch_t
        self.grid = (t // patch_t, h // patch, w // patch)
        self.embed = nn.Conv3d(c, dim, kernel_size=(patch_t, patch, patch), stride=(patch_t, patch, patch))
        self.register_buffer("pos", sincos_pos_embed(self.grid, dim)[None], persistent=False)
        self.final = AdaLNFinalLayer(dim, patch_t * patch * patch * c)

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    def check(self, x: Latents) -> None:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected grid latents [B, {self.shape}], got {got}")

    def embed_tokens(self, x: Tensor) -> Tensor:
        self.check(x)
        return rearrange(self.embed(x), "b d t h w -> b (t h w) d") + self.pos

    def unembed(self, h: Tensor, c: Tensor) -> Tensor:
        t, gh, gw = self.grid
        return rearrange(self.final(h, c), "b (t h w) (r p q c) -> b c (t r) (h p) (w q)",
                         t=t, h=gh, w=gw, r=self.patch_t, p=self.patch, q=self.patch)

    def zero_init(self) -> None:
        self.final.zero_init()


def make_adapter(example: Latents, dim: int, patch: int, patch_t: int = 1) -> nn.Module:
    """The layout adapter for one video's latents (no batch dim): dict -> triplane, 4-D tensor -> grid.

    Raises:
        ValueError: for any other layout.
    """
    if isinstance(example, dict):
        return TriplaneAdapter({k: tuple(v.shape) for k, v in example.items()}, dim, patch)
    if isinstance(example, Tensor) and example.ndim == 4:
        return GridAdapter(tuple(example.shape), dim, patch, patch_t)
    got = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
    raise ValueError(f"SiT takes a dict of planes [C, H, W] or a grid [C, t, h, w] per video, got {got}")


# --------------------------------------------------------------------------- the model


@register_generator("sit")
class SiT(nn.Module):
    """SiT velocity model over one tokenizer's latents.

    Args:
        example: latents of ONE video (no batch dim): a dict of planes
            ``[C, H, W]`` or a grid ``float [C, t, h, w]``; fixes the layout.
        size: a key of :data:`SIT_SIZES` (``tiny``, ``S``, ``B``, ``L``, ``XL``).
        patch, patch_t: patch sizes (SiT-L/2 means ``patch=2``).
        num_classes: 1 for unconditional generation (CoordTok supp. A.2).
        class_dropout: label dropout for classifier-free guidance (0 when unconditional).
        mlp_ratio: MLP width over ``dim`` (4, DiT).

    ``forward(x, t, y)`` takes batched latents of the example's layout,
    ``t`` ``float [B]`` in ``[0, 1]`` (0 = noise, 1 = data) and ``y``
    ``int64 [B]``; it returns the velocity in the same layout. The output
    has the input's channels only (CoordTok's ``learn_sigma`` half is
    discarded by SiT's velocity loss anyway).
    """

    unused_parameters = False  # every parameter gets a gradient at every step (DDP need not search)

    def __init__(self, example: Latents, size: str = "tiny", patch: int = 2, patch_t: int = 1, num_classes: int = 1,
                 class_dropout: float = 0.0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if size not in SIT_SIZES:
            raise ValueError(f"unknown SiT size {size!r}; expected one of {sorted(SIT_SIZES)}")
        config = SIT_SIZES[size]
        dim = config.dim
        self.size, self.num_classes = size, num_classes
        self.adapter = make_adapter(example, dim, patch, patch_t)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(num_classes, dim, class_dropout)
        self.blocks = nn.ModuleList([AdaLNZeroBlock(dim, config.heads, mlp_ratio) for _ in range(config.depth)])
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT initialize_weights: xavier linears, patch embed like a linear, N(0, 0.02) embeddings, zero adaLN
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        for m in self.adapter.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            block.zero_init()
        self.adapter.zero_init()

    @property
    def num_patches(self) -> int:
        """Transformer sequence length (tokens after patchify)."""
        return self.adapter.num_patches

    def forward(self, x: Latents, t: Tensor, y: Tensor) -> Latents:
        h = self.adapter.embed_tokens(x)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            h = block(h, c)
        return self.adapter.unembed(h, c)

    def forward_with_cfg(self, x: Latents, t: Tensor, y: Tensor, cfg_scale: float) -> Latents:
        """Classifier-free guidance: ``v_null + s * (v_y - v_null)`` on every channel.

        Needs a model trained with ``class_dropout > 0`` (the null class
        ``num_classes``). ``cfg_scale == 1`` is the plain conditional model.
        """
        if cfg_scale == 1.0:
            return self(x, t, y)
        if self.y_embedder.dropout <= 0:
            raise ValueError("classifier-free guidance needs a model trained with class_dropout > 0")
        both = tree_cat([x, x])
        v = self(both, torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.num_classes)]))
        cond, null = tree_split(v, y.shape[0])
        return tree_map(lambda a, b: b + cfg_scale * (a - b), cond, null)


# --------------------------------------------------------------------------- sizes and presets

#: size -> depth, hidden dim, heads; S/B/L/XL from SiT (Ma et al. 2024) / DiT Table 1, tiny for CPU
SIT_SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig(depth=2, dim=64, heads=4),
    "S": SizeConfig(depth=12, dim=384, heads=6),
    "B": SizeConfig(depth=12, dim=768, heads=12),
    "L": SizeConfig(depth=24, dim=1024, heads=16),
    "XL": SizeConfig(depth=28, dim=1152, heads=16),
}



def _register_presets() -> None:
    """``sit_<size>_<patch>``: every size with DiT's patch sizes 2, 4, 8 (``sit_L_2`` is CoordTok-SiT-L/2, supp. A.2)."""
    for size, config in SIT_SIZES.items():
        for patch in (2, 4, 8):
            register_preset(f"sit_{size}_{patch}", "sit", {"size": size, "patch": patch}, kind="generators",
                            summary=f"{config.summary()}, patch={patch}", source="SiT / DiT Table 1")


_register_presets()
