"""Tokenizer families. Importing this package registers every built-in tokenizer."""
from video_tokenizers import grid3d  # noqa: F401
from video_tokenizers import coordtok  # noqa: F401
from video_tokenizers import videoflextok  # noqa: F401
from video_tokenizers import frame2d_vq, grid3d_vq, pvdm  # noqa: F401  (Table 7 baselines)
