"""Tokenizer, dataset readers, alignment, masking and batching."""

from xlt_engine.data.conll import ConllFile, Sentence, read_conll
from xlt_engine.data.tokenizer import WordPieceTokenizer, load_tokenizer

__all__ = ["ConllFile", "Sentence", "WordPieceTokenizer", "load_tokenizer", "read_conll"]
