"""Tokenizer, dataset readers, alignment, masking and batching."""

from xlt_engine.data.tokenizer import WordPieceTokenizer, load_tokenizer

__all__ = ["WordPieceTokenizer", "load_tokenizer"]
