"""Classical codecs as tokenizers (video_tokenizers/codecs.py) on the real sample clips."""
from __future__ import annotations

import pytest
import torch

from harness_core.registry import TOKENIZERS
from metrics.quality import per_frame_psnr
from video_tokenizers.codecs import CODECS

#: two CRFs per codec, far enough apart that the quality and the bits must move
CRF_PAIRS = {"h264": (20, 40), "h265": (20, 40), "vp9": (20, 50), "av1": (20, 50)}


def codec(name: str, **kwargs):
    return TOKENIZERS.get(name)(**kwargs)


@pytest.mark.parametrize("name", list(CODECS))
def test_round_trip_shape_range_and_bits(name, sample_videos):
    tok = codec(name, crf=CRF_PAIRS[name][0])
    tokens = tok.encode(sample_videos)
    recon = tok.decode(tokens)
    assert recon.shape == sample_videos.shape and recon.dtype == torch.float32
    assert recon.min() >= -1 and recon.max() <= 1
    levels = (recon + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # the decoded uint8 frames, nothing else
    # bits: 8 x the bitstream bytes of each row, which are the latents' bytes before the zero padding
    b, _, t, h, w = sample_videos.shape
    assert tokens.bits.dtype == torch.float64 and tokens.bits.shape == (b,)
    row_bytes = torch.tensor([sum(sizes) for sizes in tokens.info["packet_bytes"]], dtype=torch.float64)
    assert torch.equal(tokens.bits, 8 * row_bytes)
    assert tokens.latents.dtype == torch.uint8 and tokens.latents.shape == (b, int(row_bytes.max()))
    bpp = tokens.bits / (t * h * w)
    assert torch.allclose(bpp, 8 * row_bytes / (t * h * w))
    assert 0.01 < float(bpp.min()) and float(bpp.max()) < 8  # compressed: well under the 12 bits of raw yuv420p
    assert tokens.tokens_per_video == round(float(tokens.bits.mean()))
    assert tokens.info["encoder"] == CODECS[name].encoder and tokens.info["gop"] == t
    assert float(per_frame_psnr(sample_videos, recon).mean()) > 25


@pytest.mark.parametrize("name", list(CODECS))
def test_psnr_rises_and_bits_grow_as_crf_falls(name, sample_videos):
    low, high = CRF_PAIRS[name]
    fine, coarse = codec(name, crf=low), codec(name, crf=high)
    fine_tokens, coarse_tokens = fine.encode(sample_videos), coarse.encode(sample_videos)
    fine_psnr = per_frame_psnr(sample_videos, fine.decode(fine_tokens)).mean(dim=1)
    coarse_psnr = per_frame_psnr(sample_videos, coarse.decode(coarse_tokens)).mean(dim=1)
    assert bool((fine_psnr > coarse_psnr + 1.0).all()), (fine_psnr, coarse_psnr)
    assert bool((fine_tokens.bits > coarse_tokens.bits).all())


@pytest.mark.parametrize("name", list(CODECS))
def test_encoding_is_deterministic(name, sample_videos):
    video = sample_videos
    first, second = codec(name, crf=30), codec(name, crf=30)
    a, b = first.encode(video), second.encode(video)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.bits, b.bits)
    assert a.info["packet_bytes"] == b.info["packet_bytes"]
    assert torch.equal(first.decode(a), second.decode(b))


@pytest.mark.parametrize("name", ["h264", "h265"])
def test_sei_units_carry_no_picture_data(name, sample_videos):
    video = sample_videos[:1]
    stripped, kept = codec(name, crf=28), codec(name, crf=28, strip_sei=False)
    a, b = stripped.encode(video), kept.encode(video)
    assert float(a.bits[0]) < float(b.bits[0])  # x264 / x265 write their version and options there
    assert torch.equal(stripped.decode(a), kept.decode(b))


def test_gop_and_preset_reach_the_encoder(sample_videos):
    video = sample_videos[:1]
    one_gop, short_gops = codec("h264", crf=28), codec("h264", crf=28, gop=4)
    assert float(short_gops.encode(video).bits[0]) > float(one_gop.encode(video).bits[0])  # 4 intra frames, not 1
    assert codec("h264", crf=28, preset="ultrafast").encode(video).info["preset"] == "ultrafast"
    with pytest.raises(ValueError, match="h264: libx264 refused"):
        codec("h264", crf=28, preset="no_such_preset").encode(video)


@pytest.mark.parametrize("kwargs, match", [
    ({"crf": 52}, r"h264: crf must be an integer in \[0, 51\], got 52"),
    ({"crf": 23.5}, "crf must be an integer"),
    ({"crf": -1}, "crf must be an integer"),
    ({"crf": 23, "gop": 0}, "gop must be a positive integer"),
    ({"crf": 23, "fps": 0}, "fps must be a positive integer"),
    ({"crf": 23, "preset": ""}, "preset must be a non-empty name"),
])
def test_bad_kwargs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        codec("h264", **kwargs)


def test_av1_crf_range_and_too_small_or_odd_frames(sample_videos):
    with pytest.raises(ValueError, match=r"av1: crf must be an integer in \[1, 63\]"):
        codec("av1", crf=0)
    with pytest.raises(ValueError, match=r"h265 \(libx265\) needs frames of at least 16x16, got 8x8"):
        codec("h265", crf=28).encode(sample_videos[:1, :, :2, :8, :8])
    with pytest.raises(ValueError, match="needs even frame height and width, got 63x64"):
        codec("vp9", crf=31).encode(sample_videos[:1, :, :2, :63])
    with pytest.raises(ValueError, match="has no token budget"):
        codec("h264", crf=23).encode(sample_videos[:1], budget=4)
    with pytest.raises(ValueError, match="not trained"):
        codec("h264", crf=23).training_losses(sample_videos[:1], 0)


def test_a_codec_entry_with_generation_on_is_refused_when_the_suite_loads(tmp_path, capsys):
    from conftest import cli
    from test_engine import tiny_suite

    entry = {"id": "h264_crf28", "name": "h264", "kwargs": {"crf": 28}, "train": None}
    path = tiny_suite(tmp_path, [entry], generation={"enabled": True})
    code, _, err = cli(capsys, "protocol", str(path))
    assert code == 2 and "tokenizers[h264_crf28].generation: h264 cannot be generated from" in err
    path = tiny_suite(tmp_path, [{**entry, "generation": {"enabled": False}}], generation={"enabled": True})
    assert cli(capsys, "protocol", str(path))[0] == 0
