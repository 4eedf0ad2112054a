"""Data: text sources, tokenizers, and the token tensors training and evaluation read."""

from .blocks import group_into_blocks, tokenize_stream
from .sources import load_files, load_hub_split, load_text_splits
from .tokenizer import EOS_TOKEN, load_pretrained_tokenizer, train_tokenizer

__all__ = [
    "EOS_TOKEN",
    "group_into_blocks",
    "load_files",
    "load_hub_split",
    "load_pretrained_tokenizer",
    "load_text_splits",
    "tokenize_stream",
    "train_tokenizer",
]
