"""Tokenizer families. Importing this package registers every built-in tokenizer and its named
size presets (``coordtok_L_1280``, ``grid3d_tiny``, ...; :data:`harness_core.registry.PRESETS`)."""
from video_tokenizers import grid3d  # noqa: F401
from video_tokenizers import coordtok  # noqa: F401
from video_tokenizers import videoflextok  # noqa: F401
from video_tokenizers import frame2d_vq, grid3d_vq, pvdm  # noqa: F401  (Table 7 baselines)
from video_tokenizers import diffusers_vae  # noqa: F401  (pretrained diffusers video VAEs; diffusers itself is imported lazily)
from video_tokenizers import omnitokenizer  # noqa: F401  (OmniTokenizer-DV / -CV, Table 7)
from video_tokenizers import tats  # noqa: F401  (TATS-AE with its own network, Table 7)
from video_tokenizers import larp  # noqa: F401  (LARP, issue 26)
from video_tokenizers import codecs  # noqa: F401  (classical codecs h264/h265/vp9/av1 as evaluation-only baselines, issue 27)
