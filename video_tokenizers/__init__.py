"""Tokenizer families. Importing this package registers every built-in tokenizer and its named
size presets (``coordtok_L_1280``, ``grid3d_tiny``, ...; :data:`harness_core.registry.PRESETS`)."""
from video_tokenizers import grid3d  # noqa: F401
from video_tokenizers import coordtok  # noqa: F401
from video_tokenizers import videoflextok  # noqa: F401
from video_tokenizers import frame2d_vq, grid3d_vq, pvdm  # noqa: F401  (Table 7 baselines)
from video_tokenizers import diffusers_vae  # noqa: F401  (pretrained diffusers video VAEs; diffusers itself is imported lazily)
