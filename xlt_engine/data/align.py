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

from xlt_engine.data.batching import spans
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
            cuts = cut_windows(counts, room)
            for first, last, sel, pos, clipped in cuts:
                out.clipped_words += clipped
                body = ids[sel]
                win_ids = np.empty(len(body) + 2, dtype=np.int32)
                win_ids[0], win_ids[1:-1], win_ids[-1] = cls, body, sep
                win_labels = np.full(len(win_ids), IGNORE, dtype=np.int64)
                win_labels[pos] = word_labels[first:last]
                out.windows.append(Window(win_ids, win_labels, pos, s, first))
            if len(cuts) > 1:
                out.split_sentences += 1
    return out


def cut_windows(counts: np.ndarray, room: int) -> list[tuple[int, int, slice, np.ndarray, bool]]:
    """A sentence whose words have ``counts`` pieces each -> its windows of at most ``room``
    pieces, greedy: as many whole words as fit, at least one (clipped if it alone is too long).
    Per window: its words ``first:last``, its pieces (a slice of the sentence's), each word's
    position in the window (after [CLS]) and whether its one word was clipped."""
    n = len(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    ends = starts + counts
    out = []
    first = 0
    while first < n:
        end_piece = starts[first] + room
        last = max(int(np.searchsorted(ends, end_piece, side="right")), first + 1)
        sel = slice(int(starts[first]), int(min(ends[last - 1], end_piece)))
        pos = (starts[first:last] - starts[first] + 1).astype(np.int32)
        out.append((first, last, sel, pos, bool(counts[first] > room and last == first + 1)))
        first = last
    return out


class WordPieces:
    """Sub-token ids of words, each distinct word encoded once: the tokenizer runs only on the
    words a chunk adds, and a sentence's pieces are gathered from the table. Exact because
    pre-split words are encoded one by one (normaliser, pre-tokenizer and model run on each
    word alone, with no context: ``tests/data/test_align.py`` checks it for WordPiece,
    SentencePiece Unigram and byte-level BPE files).

    A word with no piece is one ``[UNK]`` (``empty`` marks it), as in ``align_words``. The
    table holds at most ``limit`` words: past that it starts again empty, so memory stays
    bounded on a corpus of any vocabulary."""

    def __init__(self, tokenizer, limit: int = 200_000):
        self.tok, self.limit = tokenizer, limit
        self.clear()

    def clear(self) -> None:
        self.index: dict[str, int] = {}
        self.flat = np.zeros(1 << 16, dtype=np.int32)
        self.used = 0
        self.starts = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.empty = np.zeros(0, dtype=bool)

    def _add(self, words: list[str]) -> None:
        """Encode ``words`` (new to the table) and append their pieces."""
        if not words:
            return
        encs = self.tok.backend.encode_batch(
            [[w] for w in words], is_pretokenized=True, add_special_tokens=False
        )
        pieces = [e.ids or [self.tok.unk_id] for e in encs]
        empty = np.fromiter((not e.ids for e in encs), bool, len(encs))
        counts = np.fromiter((len(p) for p in pieces), np.int64, len(pieces))
        flat = np.fromiter((i for p in pieces for i in p), np.int32, int(counts.sum()))
        if self.used + len(flat) > len(self.flat):
            grown = np.zeros(max(2 * len(self.flat), self.used + len(flat)), dtype=np.int32)
            grown[: self.used] = self.flat[: self.used]
            self.flat = grown
        self.flat[self.used : self.used + len(flat)] = flat
        base = len(self.counts)
        self.starts = np.concatenate([self.starts, self.used + np.cumsum(counts) - counts])
        self.counts = np.concatenate([self.counts, counts])
        self.empty = np.concatenate([self.empty, empty])
        self.used += len(flat)
        self.index.update(zip(words, range(base, base + len(words)), strict=True))

    def lookup(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """The table entry of every word of ``sentences``, back to back (int64)."""
        if len(self.counts) > self.limit:
            self.clear()
        words = set().union(*sentences)
        self._add(list(words - self.index.keys()))
        get = self.index.__getitem__
        return np.fromiter(
            (get(w) for s in sentences for w in s), np.int64, sum(len(s) for s in sentences)
        )


def _words(pieces: WordPieces, sentences, labels):
    """Words per sentence, each word's entry in ``pieces`` and its label (IGNORE unlabeled),
    after checking that every sentence has words and, when labeled, one label per word."""
    if labels is not None and len(labels) != len(sentences):
        raise ValueError(f"{len(labels)} label lists for {len(sentences)} sentences")
    n_words = np.fromiter((len(s) for s in sentences), np.int64, len(sentences))
    if (n_words == 0).any():
        raise ValueError(f"sentence {int(np.argmin(n_words))} has no words")
    entries = pieces.lookup(sentences)
    if labels is None:
        return n_words, entries, np.full(len(entries), IGNORE, dtype=np.int64)
    for s, (words, lab) in enumerate(zip(sentences, labels, strict=True)):
        if len(lab) != len(words):
            raise ValueError(f"sentence {s}: {len(lab)} labels for {len(words)} words")
    return n_words, entries, np.fromiter((x for lab in labels for x in lab), np.int64, len(entries))


def _flat_windows(ids, lengths, positions, rows, targets, units, stats) -> dict:
    return {
        "ids": ids,
        "lengths": lengths,
        "positions": positions,
        "rows": rows,
        "targets": targets,
        "units": units,
        "stats": stats,
    }


def align_flat(
    pieces: WordPieces,
    sentences: Sequence[Sequence[str]],
    labels: Sequence[Sequence[int]] | None,
    max_len: int,
) -> dict:
    """``align_words`` for a packed store: the same windows, as flat arrays (``ids`` int32 and
    ``lengths`` per window, ``positions`` int64 and ``rows`` per window, ``targets`` int64,
    ``units``: each window's sentence) plus ``stats``, with no Python object per window. A
    sentence that fits one window is gathered with array operations; a longer one is cut by
    ``cut_windows`` as ``align_words`` cuts it."""
    if max_len < 3:
        raise ValueError(f"max_len must be at least 3 ([CLS] piece [SEP]), got {max_len}")
    room = max_len - 2
    tok = pieces.tok
    n_words, entries, word_labels = _words(pieces, sentences, labels)
    counts = pieces.counts[entries]
    ids = pieces.flat[spans(pieces.starts[entries], counts)]
    word_start = np.concatenate([[0], np.cumsum(n_words)[:-1]])  # first word of each sentence
    piece_start = np.cumsum(counts) - counts  # first piece of each word, over the chunk
    totals = np.add.reduceat(counts, word_start)  # pieces per sentence
    stats = dict(unk_words=int(pieces.empty[entries].sum()), split_sentences=0, clipped_words=0)
    n_sent = len(sentences)
    # the sentences that fit one window: [CLS] pieces [SEP], positions at their words' starts
    fits = totals <= room
    word_fits = np.repeat(fits, n_words)
    fit_totals = totals[fits]
    fit_lengths = fit_totals + 2
    fit_start = np.cumsum(fit_lengths) - fit_lengths
    fit_ids = np.empty(int(fit_lengths.sum()), dtype=np.int32)
    fit_ids[fit_start] = tok.cls_id
    fit_ids[fit_start + fit_lengths - 1] = tok.sep_id
    fit_ids[spans(fit_start + 1, fit_totals)] = ids[np.repeat(word_fits, counts)]
    word_pos = 1 + piece_start - np.repeat(piece_start[word_start], n_words)
    fit_pos, fit_tg = word_pos[word_fits], word_labels[word_fits]
    fit_rows = n_words[fits]
    long = np.flatnonzero(~fits)
    if not len(long):  # each window its sentence
        units = np.arange(n_sent, dtype=np.int64)
        return _flat_windows(fit_ids, fit_lengths, fit_pos, fit_rows, fit_tg, units, stats)
    # the others, cut as align_words cuts them (few: a loop), then every window in order
    windows = np.where(fits, 1, 0)
    cut = {}
    for s in long:
        w0 = int(word_start[s])
        sent_ids = ids[piece_start[w0] : piece_start[w0] + totals[s]]
        cuts = cut_windows(counts[w0 : w0 + n_words[s]], room)
        stats["split_sentences"] += len(cuts) > 1
        stats["clipped_words"] += sum(c[4] for c in cuts)
        cut[s] = [
            (
                np.concatenate([[tok.cls_id], sent_ids[sel], [tok.sep_id]]).astype(np.int32),
                pos.astype(np.int64),
                word_labels[w0 + first : w0 + last],
            )
            for first, last, sel, pos, _ in cuts
        ]
        windows[s] = len(cuts)
    first_window = np.cumsum(windows) - windows
    lengths = np.zeros(int(windows.sum()), dtype=np.int64)
    rows = np.zeros_like(lengths)  # each window's pieces and labelled rows
    fit_win = first_window[fits]
    lengths[fit_win], rows[fit_win] = fit_lengths, fit_rows
    for s, parts in cut.items():
        k = first_window[s] + np.arange(len(parts))
        lengths[k], rows[k] = [len(p[0]) for p in parts], [len(p[1]) for p in parts]
    out_ids, out_pos = np.empty(lengths.sum(), np.int32), np.empty(rows.sum(), np.int64)
    out_tg = np.empty_like(out_pos)
    id_start, row_start = np.cumsum(lengths) - lengths, np.cumsum(rows) - rows
    out_ids[spans(id_start[fit_win], fit_lengths)] = fit_ids
    fit_rows_at = spans(row_start[fit_win], fit_rows)
    out_pos[fit_rows_at], out_tg[fit_rows_at] = fit_pos, fit_tg
    for s, parts in cut.items():
        for j, (w_ids, w_pos, w_tg) in enumerate(parts):
            k = first_window[s] + j
            out_ids[id_start[k] : id_start[k] + len(w_ids)] = w_ids
            out_pos[row_start[k] : row_start[k] + len(w_pos)] = w_pos
            out_tg[row_start[k] : row_start[k] + len(w_tg)] = w_tg
    units = np.repeat(np.arange(n_sent, dtype=np.int64), windows)
    return _flat_windows(out_ids, lengths, out_pos, rows, out_tg, units, stats)


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
