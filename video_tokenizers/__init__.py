"""Tokenizer families. Importing this package registers every built-in tokenizer."""
from video_tokenizers import grid3d  # noqa: F401
