"""GPT-style autoregressive transformer over discrete token sequences.

For the discrete tokenizers (VideoFlexTok's FSQ indices, the VQ grid
baselines): next-token prediction with a causal transformer (pre-LayerNorm
GPT-2 blocks, :class:`harness_core.layers.TransformerBlock` with
``causal=True``; learned absolute positions), class-conditional through a class token
at position 0 (LlamaGen-style "class token as prefix"), classifier-free
guidance by mixing the logits of the class and of a null class, and a
key/value cache for sampling.

Token order (:func:`to_sequence`):

* fixed-budget tokenizers: the indices of a video are flattened row-major
  (clip, then time, then space for the grid baselines; raster order of
  MaskGIT / TATS-style AR priors);
* flexible, coarse-to-fine tokenizers (VideoFlexTok, indices ``[t, k]``: ``t``
  latent timesteps, ``k`` ordered register tokens each): the sequence is
  ordered **by register index, then timestep**, ``s = [r0 of t0 .. t_last,
  r1 of t0 .. t_last, ...]``. Any prefix of ``K * t`` tokens is exactly the
  first ``K`` registers of every timestep, i.e. a valid VideoFlexTok prefix
  of budget ``K`` per timestep (research notes 2.3-2.4: nested dropout keeps
  a prefix independently per timestep), so generation can stop at any
  per-timestep budget and the result still decodes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from harness.generation.sit import SIT_SIZES
from harness_core.registry import SizeConfig, register_generator, register_size_presets
from harness_core.layers import TransformerBlock

# --------------------------------------------------------------------------- token order


def to_sequence(indices: Tensor, coarse_to_fine: bool = False) -> Tensor:
    """Per-video indices ``int64 [B, ...]`` -> sequence ``int64 [B, L]`` in generation order.

    ``coarse_to_fine`` needs ``[B, t, k]`` (timesteps, ordered registers) and
    orders by register index then timestep (see the module docstring).

    Raises:
        ValueError: when ``coarse_to_fine`` and the indices are not 3-D.
    """
    if coarse_to_fine:
        if indices.ndim != 3:
            raise ValueError(f"coarse-to-fine order needs indices [B, t, k], got {tuple(indices.shape)}")
        return rearrange(indices, "b t k -> b (k t)")
    return indices.reshape(indices.shape[0], -1)


def from_sequence(seq: Tensor, shape: tuple[int, ...], coarse_to_fine: bool = False) -> Tensor:
    """Inverse of :func:`to_sequence`: ``[B, L]`` -> ``[B, *shape]``.

    With ``coarse_to_fine`` and ``shape = (t, k)``, a shorter sequence of
    ``K * t`` tokens (a generation stopped early) gives ``[B, t, K]``.

    Raises:
        ValueError: when the length does not fit ``shape``.
    """
    if coarse_to_fine:
        t = shape[0]
        if seq.shape[1] % t:
            raise ValueError(f"a coarse-to-fine sequence of {seq.shape[1]} tokens is not a multiple of t={t}")
        return rearrange(seq, "b (k t) -> b t k", t=t)
    expected = 1
    for s in shape:
        expected *= s
    if seq.shape[1] != expected:
        raise ValueError(f"sequence of {seq.shape[1]} tokens does not fit indices of shape {shape}")
    return seq.reshape(seq.shape[0], *shape)


# --------------------------------------------------------------------------- the model


@register_generator("ar")
class ARTransformer(nn.Module):
    """Class-conditional next-token model over sequences of ``seq_len`` codes.

    Args:
        vocab_size: number of codes (``tokenizer.codebook_size()``).
        seq_len: tokens per video (the full budget).
        size: a key of :data:`AR_SIZES`.
        num_classes: 1 for unconditional generation.
        class_dropout: probability of the null class in training (CFG); 0 = no null class.

    Shapes: ``forward(idx int64 [B, L], y int64 [B]) -> logits float [B, L, vocab]``
    where position ``i`` predicts ``idx[:, i]`` from the class token and ``idx[:, :i]``.
    """

    unused_parameters = False  # every parameter gets a gradient at every step (DDP need not search)

    def __init__(self, vocab_size: int, seq_len: int, size: str = "tiny", num_classes: int = 1,
                 class_dropout: float = 0.0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if size not in AR_SIZES:
            raise ValueError(f"unknown AR size {size!r}; expected one of {sorted(AR_SIZES)}")
        if vocab_size < 2 or seq_len < 1:
            raise ValueError(f"need vocab_size >= 2 and seq_len >= 1, got {vocab_size}, {seq_len}")
        config = AR_SIZES[size]
        depth, dim, heads = config.depth, config.dim, config.heads
        self.size, self.vocab_size, self.seq_len = size, vocab_size, seq_len
        self.num_classes, self.class_dropout = num_classes, class_dropout
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.cls_emb = nn.Embedding(num_classes + int(class_dropout > 0), dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len, dim))
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio, norm_eps=1e-5, gelu="tanh", causal=True)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)
        for block in self.blocks:  # GPT-2: scale residual projections by 1/sqrt(2 depth)
            nn.init.normal_(block.attn.proj.weight, std=0.02 / (2 * depth) ** 0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=0.02 / (2 * depth) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _class_tokens(self, y: Tensor) -> Tensor:
        if self.training and self.class_dropout > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.class_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.cls_emb(y)[:, None]

    def forward(self, idx: Tensor, y: Tensor) -> Tensor:
        if idx.ndim != 2 or idx.shape[1] > self.seq_len:
            raise ValueError(f"expected indices [B, L <= {self.seq_len}], got {tuple(idx.shape)}")
        h = torch.cat([self._class_tokens(y), self.tok_emb(idx[:, :-1])], dim=1)
        h = h + self.pos_emb[:, : h.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def loss(self, idx: Tensor, y: Tensor) -> Tensor:
        """Per-sample next-token cross-entropy ``float [B]`` (nats per token)."""
        logits = self(idx, y)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), idx.flatten(), reduction="none")
        return ce.view(idx.shape).mean(1)

    @torch.no_grad()
    def generate(self, y: Tensor, length: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                 cfg_scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Sample ``int64 [B, length]`` codes for classes ``y`` ``int64 [B]``.

        ``length`` defaults to ``seq_len``; a shorter length stops early (a
        coarse-to-fine prefix). ``cfg_scale != 1`` mixes conditional and
        null-class logits, ``null + s * (cond - null)``; it needs
        ``class_dropout > 0`` in training.

        Raises:
            ValueError: for a bad ``length`` or guidance without a null class.
        """
        length = self.seq_len if length is None else length
        if not 1 <= length <= self.seq_len:
            raise ValueError(f"length must be in [1, {self.seq_len}], got {length}")
        guided = cfg_scale != 1.0
        if guided and self.class_dropout <= 0:
            raise ValueError("classifier-free guidance needs a model trained with class_dropout > 0")
        b = y.shape[0]
        cls = torch.cat([y, torch.full_like(y, self.num_classes)]) if guided else y
        caches: list[dict[str, Tensor]] = [{} for _ in self.blocks]
        h = self.cls_emb(cls)[:, None]
        out = torch.empty(b, length, dtype=torch.long, device=y.device)
        for i in range(length):
            h = h + self.pos_emb[:, i : i + 1]
            for block, cache in zip(self.blocks, caches):
                h = block(h, cache=cache)
            logits = self.head(self.norm(h[:, -1])).float()
            if guided:
                cond, null = logits[:b], logits[b:]
                logits = null + cfg_scale * (cond - null)
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            out[:, i] = nxt
            h = self.tok_emb(torch.cat([nxt, nxt]) if guided else nxt)[:, None]
        return out


# --------------------------------------------------------------------------- sizes and presets

#: size -> depth, hidden dim, heads: the SiT sizes (tiny, S/B/L/XL), so that generators match across tokenizers
AR_SIZES: dict[str, SizeConfig] = SIT_SIZES

register_size_presets("ar", AR_SIZES, kind="generators", source="SiT / DiT Table 1 widths")
