"""Shared model layers and named size presets.

* Every model family, built under a fixed seed at a tiny size, has bit-identical
  parameters (state_dict keys, order, dtypes and values) and outputs to the
  numbers recorded before the building blocks were unified into
  :mod:`video_tokenizers.layers` (issue 14, item 6).
* The sin-cos position embeddings of :mod:`video_tokenizers.layers` reproduce
  the three former implementations (SiT / MAE float64, PVDM float32 exp-log,
  timm ``build_sincos2d_pos_embed``) exactly.
* Every preset of :data:`harness.registry.PRESETS` resolves to its family's
  keyword arguments, the tiny ones build, and ``python -m harness list`` prints them.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import pytest
import torch

NO_GAN = {"gan": None, "perceptual_weight": 0.0}


# ----------------------------------------------------------------------------------------- fingerprints


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


def state_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the state_dict (keys in order, dtypes, shapes, values) and of the parameter order."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(_digest(value).encode())
    h.update("|".join(name for name, _ in model.named_parameters()).encode())
    return h.hexdigest()[:16]


def _perturb(model: torch.nn.Module) -> None:
    """Add seeded noise to every parameter (in parameter order), so zero-initialised layers take part."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _video(frames: int, size: int = 32) -> torch.Tensor:
    return torch.rand((1, 3, frames, size, size), generator=torch.Generator().manual_seed(2)) * 2 - 1


def _tokenizer_outputs(model, video: torch.Tensor, **encode_kwargs) -> list[torch.Tensor]:
    tokens = model.encode(video, **encode_kwargs)
    leaves = list(tokens.latents.values()) if isinstance(tokens.latents, dict) else [tokens.latents]
    if tokens.indices is not None:
        leaves.append(tokens.indices)
    return leaves + [model.decode(tokens)]


def _coordtok():
    from video_tokenizers.coordtok import CoordTok

    torch.manual_seed(0)
    model = CoordTok(size="tiny", width=32, heads=2, frames=16, resolution=32).eval()
    return model, lambda: _tokenizer_outputs(model, _video(16))


def _videoflextok():
    from harness.registry import create_tokenizer

    vae = {"name": "grid3d", "kwargs": {"size": "tiny", "channels": 8, "causal": True, "latent_channels": 16, "clip_frames": 17}}
    torch.manual_seed(0)
    model = create_tokenizer("videoflextok", size="tiny", vae=vae, n_max=8, enc_depth=1, enc_dim=32, enc_heads=2,
                             dec_depth=2, dec_dim=32, dec_heads=2, sample_steps=2).eval()

    def outputs() -> list[torch.Tensor]:
        video = _video(17)
        out = _tokenizer_outputs(model, video, num_tokens=4)
        torch.manual_seed(3)
        model.train()
        losses = model.training_losses(video, step=0)
        model.eval()
        return out + [losses["loss"], losses["mean_keep"]]

    return model, outputs


def _pvdm():
    from video_tokenizers.pvdm import PVDMAutoencoder

    torch.manual_seed(0)
    model = PVDMAutoencoder(size="tiny", loss=NO_GAN).eval()
    return model, lambda: _tokenizer_outputs(model, _video(16))


def _grid3d():
    from video_tokenizers.grid3d import Grid3dVAE

    torch.manual_seed(0)
    model = Grid3dVAE(size="tiny", channels=8).eval()
    return model, lambda: _tokenizer_outputs(model, _video(16))


def _grid3d_vq():
    from video_tokenizers.grid3d_vq import Grid3dVQ

    torch.manual_seed(0)
    model = Grid3dVQ(size="tiny", channels=8, codebook_size=64, loss=NO_GAN).eval()
    return model, lambda: _tokenizer_outputs(model, _video(16))


def _frame2d_vq():
    from video_tokenizers.frame2d_vq import Frame2dVQ

    torch.manual_seed(0)
    model = Frame2dVQ(size="tiny", codebook_size=64, loss=NO_GAN).eval()
    return model, lambda: _tokenizer_outputs(model, _video(2))


def _sit(layout: str) -> Callable[[], tuple[torch.nn.Module, Callable[[], list[torch.Tensor]]]]:
    def build():
        from harness.generation.sit import SiT

        gen = torch.Generator().manual_seed(4)
        example = ({"xy": torch.zeros(4, 8, 8), "xt": torch.zeros(4, 16, 8), "yt": torch.zeros(4, 16, 8)}
                   if layout == "triplane" else torch.zeros(4, 2, 8, 8))
        torch.manual_seed(0)
        model = SiT(example, "tiny", patch=2, num_classes=3, class_dropout=0.1).eval()

        def outputs() -> list[torch.Tensor]:
            x = ({k: torch.randn((2, *v.shape), generator=gen) for k, v in example.items()} if layout == "triplane"
                 else torch.randn((2, *example.shape), generator=gen))
            t, y = torch.tensor([0.3, 0.8]), torch.tensor([0, 2])
            v = model.forward_with_cfg(x, t, y, cfg_scale=1.5)
            return list(v.values()) if isinstance(v, dict) else [v]

        return model, outputs

    return build


def _ar():
    from harness.generation.ar import ARTransformer

    torch.manual_seed(0)
    model = ARTransformer(vocab_size=50, seq_len=12, size="tiny", num_classes=3, class_dropout=0.1).eval()

    def outputs() -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(5)
        idx, y = torch.randint(50, (2, 12), generator=gen), torch.tensor([1, 2])
        return [model(idx, y), model.generate(y, cfg_scale=2.0, top_k=10, generator=gen)]

    return model, outputs


BUILDERS: dict[str, Callable[[], Any]] = {
    "coordtok": _coordtok, "videoflextok": _videoflextok, "pvdm": _pvdm, "grid3d": _grid3d,
    "grid3d_vq": _grid3d_vq, "frame2d_vq": _frame2d_vq, "sit_triplane": _sit("triplane"), "sit_grid": _sit("grid"),
    "ar": _ar,
}


def fingerprint(case: str) -> tuple[str, str]:
    """``(state hash at init, output hash after a seeded perturbation)`` of one family, single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, outputs = BUILDERS[case]()
        state = state_fingerprint(model)
        _perturb(model)
        with torch.no_grad():
            out = _digest(*outputs())
        return state, out
    finally:
        torch.set_num_threads(threads)


def _sincos_reference_inputs() -> dict[str, torch.Tensor]:
    """The former embeddings' outputs, for :data:`SINCOS_REFERENCE`."""
    from video_tokenizers import layers

    return {
        "sit_2d": layers.sincos_pos_embed((4, 6), 64),
        "sit_3d": layers.sincos_pos_embed((2, 4, 4), 96),
        "sit_3d_pad": layers.sincos_pos_embed((3, 2, 5), 70),
        "sit_1d_odd": layers.sincos_pos_embed((7,), 33),
        "pvdm_1d": layers.sincos_pos_embed((7,), 64, convention="transformer"),
        "pvdm_1d_odd": layers.sincos_pos_embed((5,), 33, convention="transformer"),
        "pvdm_2d": layers.sincos_pos_embed((4, 6), 64, convention="transformer", axis_dims=(32, 32)),
        "pvdm_2d_38": layers.sincos_pos_embed((3, 5), 38, convention="transformer", axis_dims=(19, 19)),
        "timm_2d": layers.sincos_pos_embed((4, 6), 128, convention="timm"),
    }


# ----------------------------------------------------------------------------------------- references

#: recorded with the code before the refactor (commit of issue 14 item 6), single-threaded CPU
REFERENCE: dict[str, tuple[str, str]] = {
    "ar": ("fcdd5ecc36cf59df", "9cf9125087ffbf3d"),
    "coordtok": ("fb06f5c389d5b450", "72a6334f6bd17f29"),  # re-recorded (AVX2 subprocess) for the official blocks
    "frame2d_vq": ("ce550b19e0514090", "4b6a236e69f44b33"),
    "grid3d": ("cbb86fa8bb1c8645", "6e0c2b7ae50500f4"),
    "grid3d_vq": ("e2295e1a87f5958e", "68e6ca371660571b"),
    "pvdm": ("62be70c6643b6878", "719631aac13bbf98"),
    "sit_grid": ("02f6d1e627708523", "6577cc28b4015cc9"),
    "sit_triplane": ("cab280cb356e0f45", "3e2afdc362864dca"),
    "videoflextok": ("348118140d554c3e", "11648792e54f0150"),
}

#: sha-256 prefixes of the former sin-cos implementations' outputs (SiT ``sincos_pos_embed``, PVDM
#: ``sincos_1d`` / ``sincos_2d``, timm ``build_sincos2d_pos_embed``) for the inputs of _sincos_reference_inputs
SINCOS_REFERENCE: dict[str, str] = {
    "sit_2d": "2ba9e68a43a192a0",
    "sit_3d": "528b11667b24dde0",
    "sit_3d_pad": "2c7a4cfe2b9111f1",
    "sit_1d_odd": "0109db29f62af707",
    "pvdm_1d": "783c9857b46d3288",
    "pvdm_1d_odd": "cb089fdffbe09fc0",
    "pvdm_2d": "2ab9845039b761ea",
    "pvdm_2d_38": "69dd9e5099899ec8",
    "timm_2d": "8ddd6a7f595c3e12",
}


#: the references were recorded on an AVX2 CPU; kernels for other instruction sets (AVX-512 in ATen's vectorized
#: loops, MKL's sgemm and oneDNN's convolutions) round differently, so the outputs are computed with all three
#: limited to AVX2, which reproduces the references on AVX-512 machines too
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.fixture(scope="module")
def avx2_fingerprints() -> dict[str, list[str]]:
    """``fingerprint(case)`` of every family, computed in one subprocess with the kernels limited to AVX2."""
    import json
    import os
    import platform
    import subprocess
    import sys
    from pathlib import Path

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the recorded outputs are those of x86-64 AVX2 kernels; this is {platform.machine()}")
    here = Path(__file__).resolve().parent
    code = ("import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import test_models_layers as t; "
            "print(json.dumps({case: t.fingerprint(case) for case in sorted(t.BUILDERS)}))")
    done = subprocess.run([sys.executable, "-c", code, str(here), str(here.parent)], capture_output=True, text=True,
                          env={**os.environ, **AVX2_ONLY}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_models_are_bit_identical_to_the_recorded_reference(case, avx2_fingerprints):
    assert tuple(avx2_fingerprints[case]) == REFERENCE[case]


def test_sincos_embeddings_reproduce_the_former_implementations():
    from timm.layers import build_sincos2d_pos_embed

    got = {name: _digest(value) for name, value in _sincos_reference_inputs().items()}
    assert got == SINCOS_REFERENCE
    from video_tokenizers.layers import sincos_pos_embed

    for shape, dim in (((4, 6), 128), ((3, 5), 64), ((1, 7), 32)):
        assert torch.equal(sincos_pos_embed(shape, dim, convention="timm"), build_sincos2d_pos_embed(list(shape), dim))


# ----------------------------------------------------------------------------------------- presets

def _size_tables() -> dict[str, dict]:
    from harness.generation.ar import AR_SIZES
    from harness.generation.sit import SIT_SIZES
    from video_tokenizers.coordtok import COORDTOK_SIZES
    from video_tokenizers.frame2d_vq import FRAME2D_VQ_SIZES
    from video_tokenizers.grid3d import GRID3D_SIZES
    from video_tokenizers.pvdm import PVDM_SIZES
    from video_tokenizers.videoflextok import VIDEOFLEXTOK_SIZES

    return {"coordtok": COORDTOK_SIZES, "videoflextok": VIDEOFLEXTOK_SIZES, "grid3d": GRID3D_SIZES,
            "grid3d_vq": GRID3D_SIZES, "frame2d_vq": FRAME2D_VQ_SIZES, "pvdm": PVDM_SIZES, "sit": SIT_SIZES, "ar": AR_SIZES}


#: presets the issue names (timm-style ``family_size``)
EXPECTED_PRESETS = {
    "coordtok_tiny", "coordtok_S", "coordtok_B", "coordtok_L", "coordtok_L_1280", "coordtok_L_3072",
    "videoflextok_tiny", "videoflextok_small", "videoflextok_k600", "videoflextok_d18_d28",
    "sit_tiny_2", "sit_S_2", "sit_B_2", "sit_L_2", "sit_XL_2", "sit_XL_4", "sit_XL_8",
    "ar_tiny", "ar_S", "ar_B", "ar_L", "ar_XL",
    "grid3d_tiny", "grid3d_small", "grid3d_base", "grid3d_large",
    "grid3d_vq_tiny", "grid3d_vq_magvit_b", "grid3d_vq_magvit_l", "grid3d_vq_tats",
    "frame2d_vq_tiny", "frame2d_vq_maskgit", "frame2d_vq_magvit2d", "pvdm_tiny", "pvdm_base",
}


def test_presets_are_listed_by_the_cli(capsys):
    from harness.__main__ import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("presets"):]
    rows = {line.split()[0]: line.split()[1] for line in section.splitlines()[3:] if line.strip()}
    assert EXPECTED_PRESETS <= set(rows)
    assert rows["coordtok_L_1280"] == "coordtok" and rows["sit_XL_2"] == "sit" and rows["ar_B"] == "ar"
    assert "R_xy=32" in section and "dec_dim=1792" in section


def test_every_preset_resolves_to_its_family_and_size():
    import inspect

    from harness.registry import GENERATORS, PRESETS, TOKENIZERS

    tables = _size_tables()
    assert EXPECTED_PRESETS <= set(PRESETS.names())
    for name, preset in PRESETS:
        assert name == preset.name and name.startswith(preset.family + "_"), name
        cls = {"tokenizers": TOKENIZERS, "generators": GENERATORS}[preset.kind].get(preset.family)
        inspect.signature(cls).bind_partial(**preset.kwargs)  # every keyword is a constructor argument
        assert preset.kwargs["size"] in tables[preset.family], name
    assert PRESETS.get("sit_XL_2").kwargs == {"size": "XL", "patch": 2}
    assert tables["sit"]["XL"] == {"depth": 28, "dim": 1152, "heads": 16}
    assert PRESETS.get("coordtok_L_3072").kwargs == {"size": "L", "latent_resolution_xy": 32, "latent_resolution_t": 32,
                                                     "latent_channels": 8}
    assert PRESETS.get("videoflextok_d18_d28").kwargs == {"size": "d18_d28"}
    assert PRESETS.get("grid3d_vq_tats").kwargs == {"size": "base", "latent_channels": 256, "codebook_size": 16384,
                                                    "recipe": "tats"}


@pytest.mark.parametrize("name, extra", [
    ("coordtok_tiny", {}), ("videoflextok_tiny", {}), ("pvdm_tiny", {}), ("grid3d_tiny", {}), ("grid3d_vq_tiny", {}),
    ("frame2d_vq_tiny", {}), ("sit_tiny_4", {"example": torch.zeros(4, 2, 8, 8)}), ("ar_tiny", {"vocab_size": 50, "seq_len": 12}),
])
def test_tiny_presets_build_the_same_model_as_the_family_with_the_preset_kwargs(name, extra):
    from harness.registry import GENERATORS, PRESETS, TOKENIZERS, create_preset

    preset = PRESETS.get(name)
    torch.manual_seed(0)
    model = create_preset(name, **extra)
    cls = {"tokenizers": TOKENIZERS, "generators": GENERATORS}[preset.kind].get(preset.family)
    torch.manual_seed(0)
    reference = cls(**preset.kwargs, **extra)
    assert type(model) is cls
    assert state_fingerprint(model) == state_fingerprint(reference)


def test_size_config_reads_as_mapping_and_attributes_and_is_immutable():
    from harness.registry import SizeConfig

    config = SizeConfig(depth=2, dim=64)
    assert config.dim == 64 and config["depth"] == 2 and dict(config) == {"depth": 2, "dim": 64}
    assert config.summary() == "depth=2, dim=64"
    with pytest.raises(AttributeError):
        config.dim = 3
    with pytest.raises(AttributeError):
        config.width
