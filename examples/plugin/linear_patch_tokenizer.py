"""A tokenizer plugin defined outside the harness: the worked example of the README.

Each non-overlapping ``4 x 8 x 8`` patch of the video becomes one continuous
token of ``channels`` values (a learned linear projection), and a transposed
projection maps tokens back to pixels: a linear patch autoencoder.
"""
import torch.nn.functional as F
from torch import nn

from harness_core.api import Tokens, VideoTokenizer, check_video


class LinearPatchTokenizer(VideoTokenizer):
    """Linear patch autoencoder: ``[B, 3, T, H, W] -> [B, channels, T/4, H/8, W/8]`` tokens."""

    chunk_frames = 16  # the engine splits longer videos into 16-frame chunks

    def __init__(self, channels: int = 16, patch=(4, 8, 8)):
        super().__init__()
        self.patch = tuple(patch)
        self.encoder = nn.Conv3d(3, channels, kernel_size=self.patch, stride=self.patch)
        self.decoder = nn.ConvTranspose3d(channels, 3, kernel_size=self.patch, stride=self.patch)

    def encode(self, video, budget=None):
        check_video(video)
        latents = self.encoder(video)
        return Tokens(latents=latents, tokens_per_video=latents[0, 0].numel(), info={"shape": tuple(video.shape[2:])})

    def decode(self, tokens):
        return self.decoder(tokens.latents)

    def training_losses(self, video, step):
        loss = F.mse_loss(self.decode(self.encode(video)), video)
        return {"loss": loss}

    def tokens_per_video(self, frames, height, width):
        chunks = -(-frames // self.chunk_frames)
        t, h, w = self.patch
        return chunks * (self.chunk_frames // t) * (height // h) * (width // w)
