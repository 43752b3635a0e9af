"""Tokenizer, dataset readers, alignment, masking and batching."""

from xlt_engine.data.cls10 import read_cls10
from xlt_engine.data.conll import ConllFile, Sentence, read_conll
from xlt_engine.data.examples import Example, TextDataset
from xlt_engine.data.marc import read_marc
from xlt_engine.data.text import iter_text, read_labeled, read_text
from xlt_engine.data.tokenizer import SubwordTokenizer, WordPieceTokenizer, load_tokenizer
from xlt_engine.data.xnli import read_xnli

__all__ = [
    "ConllFile",
    "Example",
    "Sentence",
    "SubwordTokenizer",
    "TextDataset",
    "WordPieceTokenizer",
    "iter_text",
    "load_tokenizer",
    "read_cls10",
    "read_conll",
    "read_labeled",
    "read_marc",
    "read_text",
    "read_xnli",
]
