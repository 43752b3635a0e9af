"""Words -> sub-tokens and back: label alignment for token classification (NER), and text /
sentence-pair encoding for sequence classification.

NER: each sentence's words are encoded in batches (``encode_batch`` with ``is_pretokenized``).
The word's label sits on its first sub-token, ``-100`` on the others and on ``[CLS]``/``[SEP]``.
A word that tokenises to nothing (a control or zero-width character) becomes one ``[UNK]``: it
is never dropped, so every word keeps a position to predict. A sentence longer than
``max_len - 2`` sub-tokens is split at word boundaries into windows, never truncated; a single
word longer than a whole window keeps its first ``max_len - 2`` pieces (its first piece carries
the label). ``word_predictions`` maps per-window predictions back to exactly one per word.

Classification: texts (or pairs, with token types 0/1) truncated to ``max_len`` with the
``longest_first`` strategy of Hugging Face tokenizers (the same Rust code does it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xlt_engine.data.tokenizer import WordPieceTokenizer

IGNORE = -100


@dataclass(frozen=True)
class Window:
    """One model input cut from a sentence: ``[CLS] pieces [SEP]``."""

    input_ids: np.ndarray  # int32 [T]
    labels: np.ndarray  # int64 [T]: word label on first sub-tokens, -100 elsewhere
    word_positions: np.ndarray  # int32 [n_words]: position of each word's first sub-token
    sentence: int  # index of the sentence it came from
    first_word: int  # index in that sentence of the window's first word


@dataclass
class AlignedWords:
    windows: list[Window]
    num_words: list[int]  # words per sentence
    unk_words: int  # words that tokenised to nothing and became [UNK]
    split_sentences: int  # sentences cut into more than one window
    clipped_words: int  # words longer than a window (their tail pieces dropped)


def align_words(
    tokenizer: WordPieceTokenizer,
    sentences: Sequence[Sequence[str]],
    labels: Sequence[Sequence[int]] | None = None,
    max_len: int = 128,
    batch_size: int = 2048,
) -> AlignedWords:
    """Encode pre-split ``sentences`` (lists of words) into windows of at most ``max_len``
    sub-tokens; ``labels``: one int per word (None: all ``-100``, e.g. unlabeled data)."""
    if max_len < 3:
        raise ValueError(f"max_len must be at least 3 ([CLS] piece [SEP]), got {max_len}")
    if labels is not None and len(labels) != len(sentences):
        raise ValueError(f"{len(labels)} label lists for {len(sentences)} sentences")
    room = max_len - 2
    cls, sep, unk = tokenizer.cls_id, tokenizer.sep_id, tokenizer.unk_id
    out = AlignedWords([], [], 0, 0, 0)
    for lo in range(0, len(sentences), batch_size):
        chunk = [list(s) for s in sentences[lo : lo + batch_size]]
        for i, words in enumerate(chunk):
            if not words:
                raise ValueError(f"sentence {lo + i} has no words")
        encodings = tokenizer.backend.encode_batch(
            chunk, is_pretokenized=True, add_special_tokens=False
        )
        for i, (words, enc) in enumerate(zip(chunk, encodings, strict=True)):
            s = lo + i
            n = len(words)
            word_labels = np.full(n, IGNORE, dtype=np.int64)
            if labels is not None:
                if len(labels[s]) != n:
                    raise ValueError(f"sentence {s}: {len(labels[s])} labels for {n} words")
                word_labels[:] = labels[s]
            ids = np.asarray(enc.ids, dtype=np.int32)
            counts = np.bincount(np.asarray(enc.word_ids, dtype=np.int64), minlength=n)
            if (counts == 0).any():  # words with no piece become [UNK]
                pieces = np.split(ids, np.cumsum(counts)[:-1])
                missing = counts == 0
                out.unk_words += int(missing.sum())
                ids = np.concatenate(
                    [p if len(p) else np.array([unk], np.int32) for p in pieces]
                ).astype(np.int32)
                counts = np.maximum(counts, 1)
            out.num_words.append(n)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            first = 0
            windows_before = len(out.windows)
            while first < n:
                # greedy: as many whole words as fit (at least one, clipped if it alone is too long)
                end_piece = starts[first] + room
                last = int(np.searchsorted(starts + counts, end_piece, side="right"))
                last = max(last, first + 1)
                sel = slice(starts[first], min(starts[last - 1] + counts[last - 1], end_piece))
                if counts[first] > room and last == first + 1:
                    out.clipped_words += 1
                body = ids[sel]
                pos = (starts[first:last] - starts[first] + 1).astype(np.int32)
                win_ids = np.empty(len(body) + 2, dtype=np.int32)
                win_ids[0], win_ids[1:-1], win_ids[-1] = cls, body, sep
                win_labels = np.full(len(win_ids), IGNORE, dtype=np.int64)
                win_labels[pos] = word_labels[first:last]
                out.windows.append(Window(win_ids, win_labels, pos, s, first))
                first = last
            if len(out.windows) - windows_before > 1:
                out.split_sentences += 1
    return out


def word_predictions(aligned: AlignedWords, window_predictions: Sequence[Sequence]) -> list[list]:
    """Per-window predictions (one per word of the window, in order, or per position of the
    window: then read at ``word_positions``) -> one list per sentence with exactly one entry per
    input word. Any count mismatch is an error."""
    if len(window_predictions) != len(aligned.windows):
        raise ValueError(
            f"{len(window_predictions)} window predictions for {len(aligned.windows)} windows"
        )
    out: list[list] = [[None] * n for n in aligned.num_words]
    filled = [0] * len(out)
    for w, preds in zip(aligned.windows, window_predictions, strict=True):
        k = len(w.word_positions)
        if len(preds) == len(w.input_ids) and len(preds) != k:
            preds = [preds[p] for p in w.word_positions]
        if len(preds) != k:
            raise ValueError(
                f"sentence {w.sentence}, window at word {w.first_word}: {len(preds)} predictions "
                f"for {k} words ({len(w.input_ids)} positions)"
            )
        out[w.sentence][w.first_word : w.first_word + k] = list(preds)
        filled[w.sentence] += k
    for s, (got, n) in enumerate(zip(filled, aligned.num_words, strict=True)):
        if got != n:
            raise ValueError(f"sentence {s}: {got} predictions for {n} words")
    return out


@dataclass
class EncodedTexts:
    input_ids: list[np.ndarray]  # int32 [T_i] each, with [CLS] ... [SEP] (... [SEP])
    token_type_ids: list[np.ndarray]  # int8 [T_i]: 0 for the first text, 1 for the pair
    truncated: int  # how many inputs were cut to max_len


def encode_texts(
    tokenizer: WordPieceTokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    max_len: int = 256,
    batch_size: int = 2048,
) -> EncodedTexts:
    """Texts (or sentence pairs) -> ids and token types, truncated to ``max_len`` (longest first
    for pairs), exactly as ``BertTokenizerFast(..., truncation=True, max_length=max_len)``."""
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(pairs)} pair texts for {len(texts)} texts")
    if max_len < (4 if pairs is not None else 3):
        raise ValueError(f"max_len {max_len} leaves no room for text between special tokens")
    backend = tokenizer.truncating(max_len)
    out = EncodedTexts([], [], 0)
    for lo in range(0, len(texts), batch_size):
        batch = list(texts[lo : lo + batch_size])
        if pairs is not None:
            batch = list(zip(batch, pairs[lo : lo + batch_size], strict=True))
        for enc in backend.encode_batch(batch):
            out.input_ids.append(np.asarray(enc.ids, dtype=np.int32))
            out.token_type_ids.append(np.asarray(enc.type_ids, dtype=np.int8))
            out.truncated += bool(enc.overflowing)
    return out
