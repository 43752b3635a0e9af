"""MLM masking for Bilingual Task Fitting, returning only the masked positions.

Per sequence, ``k = max(1, round(p * n))`` of its ``n`` maskable tokens are chosen (p = 0.15; a
fixed count per sequence, as in BERT's data generator, rather than a coin per token: the rate
has no variance and a static cap is easy). Maskable: inside the attention mask and not a special
token (``[PAD] [UNK] [CLS] [SEP] [MASK]`` and bracketed ``[unused..]`` entries). A chosen token
becomes ``[MASK]`` with probability 0.8, a random non-special token with 0.1, and stays with 0.1.

Whole-word masking (option): words (a piece and the ``##`` pieces after it) are taken in random
order while their pieces fit in ``k``; a word is masked whole or not at all.

The result is compact: ``positions`` are flat indices into ``B * T`` and ``labels`` the original
ids there, so the engine feeds ``hidden.view(-1, H)[positions]`` to ``fused_mlm_loss`` and never
computes the MLM head at unmasked positions. ``max_predictions`` fixes the count per sequence:
``positions``/``labels`` then have exactly ``B * max_predictions`` entries, the unused slots
pointing at the row's first position with label ``-100`` (static shapes for CUDA graphs).

Everything is drawn from the ``torch.Generator`` passed in: same seed, same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xlt_engine.data.tokenizer import SubwordTokenizer

IGNORE = -100


@dataclass(frozen=True)
class MaskedBatch:
    input_ids: torch.Tensor  # [B, T] int64, masks applied (the input is not modified)
    positions: torch.Tensor  # [P] int64 flat indices into B * T, row-major, ascending per row
    labels: torch.Tensor  # [P] int64 original ids (-100 in unused fixed-count slots)


@dataclass(frozen=True)
class MaskPolicy:
    """How many positions are selected (``probability`` of the real tokens, whole words with
    ``whole_word``, at most ``max_predictions`` a row) and what a selected one becomes: [MASK]
    (``mask_ratio``), a random token (``random_ratio``) or itself (the rest)."""

    probability: float = 0.15
    whole_word: bool = False
    max_predictions: int | None = None
    mask_ratio: float = 0.8
    random_ratio: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"probability must be in (0, 1), got {self.probability}")
        m, r = self.mask_ratio, self.random_ratio
        if m < 0 or r < 0 or m + r > 1:
            raise ValueError(
                f"mask_ratio {m} and random_ratio {r} must be >= 0 and sum to at most 1"
            )
        if self.max_predictions is not None and self.max_predictions < 1:
            raise ValueError(f"max_predictions must be >= 1, got {self.max_predictions}")


class MlmMasker:
    """Masks batches of ids for one vocabulary. Build with ``MlmMasker.from_tokenizer``."""

    def __init__(
        self,
        vocab: list[str],
        mask_id: int,
        policy: MaskPolicy = MaskPolicy(),
        special_ids: list[int] | None = None,
        continuation: list[bool] | None = None,
    ):
        """``special_ids``: ids never masked nor drawn as replacements (None: tokens written
        ``[XYZ]``, BERT's convention); ``continuation``: per id, whether the piece continues a word
        (None: ``##`` pieces), for whole-word masking."""
        self.probability, self.whole_word = policy.probability, policy.whole_word
        self.max_predictions = policy.max_predictions
        self.mask_ratio, self.random_ratio = policy.mask_ratio, policy.random_ratio
        self.mask_id = mask_id
        if special_ids is None:
            special = [len(t) > 2 and t[0] == "[" and t[-1] == "]" for t in vocab]
            self.special = torch.tensor(special, dtype=torch.bool)  # [V]
        else:
            self.special = torch.zeros(len(vocab), dtype=torch.bool)
            self.special[torch.tensor(special_ids, dtype=torch.long)] = True
        if continuation is None:
            continuation = [t.startswith("##") for t in vocab]
        if len(continuation) != len(vocab):
            raise ValueError(f"continuation has {len(continuation)} entries for {len(vocab)} ids")
        self.continuation = torch.tensor(continuation, dtype=torch.bool)
        self.random_pool = (~self.special).nonzero().squeeze(1)  # ids a random replacement uses
        if len(self.random_pool) == 0:
            raise ValueError("the vocabulary has no non-special token to draw replacements from")

    @classmethod
    def from_tokenizer(cls, tokenizer: SubwordTokenizer, **policy) -> MlmMasker:
        """The tokenizer's own special ids and word-continuation pieces (any model type);
        ``policy``: ``MaskPolicy``'s fields."""
        return cls(
            tokenizer.vocab,
            tokenizer.mask_id,
            MaskPolicy(**policy),
            special_ids=tokenizer.special_ids,
            continuation=tokenizer.continuation(),
        )

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskedBatch:
        """``input_ids`` ``[B, T]`` (CPU), ``attention_mask`` ``[B, T]`` (None: all ones)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        ids = input_ids.long()
        B, T = ids.shape
        if ids.numel() and (ids.min() < 0 or ids.max() >= len(self.special)):
            raise ValueError(f"input_ids hold ids outside the vocabulary of {len(self.special)}")
        maskable = ~self.special[ids]
        if attention_mask is not None:
            if attention_mask.shape != ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids "
                    f"{tuple(ids.shape)}"
                )
            maskable &= attention_mask.bool()
        n = maskable.sum(1)  # [B]
        k = torch.where(n > 0, (n * self.probability).round().long().clamp(min=1), 0)
        if self.max_predictions is not None:
            k = k.clamp(max=self.max_predictions)

        # unit id per token: a word (whole-word) or the token itself, unique over the batch
        pos = torch.arange(T).expand(B, T)
        if self.whole_word:
            starts = maskable & ~(self.continuation[ids] & _shift_right(maskable))
            unit = torch.cumsum(starts.long(), 1) - 1 + torch.arange(B).unsqueeze(1) * T
        else:
            unit = pos + torch.arange(B).unsqueeze(1) * T
        unit = torch.where(maskable, unit, B * T)  # unmaskable tokens: one dummy unit
        # random order of units; tokens of one unit stay together (key = unit rank, position)
        unit_rank = torch.randperm(B * T + 1, generator=generator)
        key = torch.where(maskable, unit_rank[unit] * T + pos, (B * T + 1) * T + pos)
        order = key.argsort(1)  # [B, T]; unmaskable tokens sort last
        rank = torch.empty_like(order).scatter_(1, order, pos.clone())  # rank of each token
        # a unit is taken when its last token ranks below k: units fill k in random order
        unit_last = torch.full((B * T + 1,), -1, dtype=torch.long).scatter_reduce(
            0, unit.flatten(), rank.flatten(), "amax"
        )
        chosen = maskable & (unit_last[unit] < k.unsqueeze(1))

        u = torch.rand(B, T, generator=generator)
        to_mask = chosen & (u < self.mask_ratio)
        to_random = chosen & (u >= self.mask_ratio) & (u < self.mask_ratio + self.random_ratio)
        replacement = self.random_pool[
            torch.randint(len(self.random_pool), (B, T), generator=generator)
        ]
        out = torch.where(to_mask, self.mask_id, ids)
        out = torch.where(to_random, replacement, out)

        flat = chosen.flatten().nonzero().squeeze(1)  # ascending: row-major, by position
        labels = ids.flatten()[flat]
        if self.max_predictions is None:
            return MaskedBatch(out, flat, labels)
        P = self.max_predictions
        slot_in_row = torch.cumsum(chosen.long(), 1) - 1  # [B, T]
        slot = (slot_in_row + torch.arange(B).unsqueeze(1) * P).flatten()[flat]
        positions = (torch.arange(B) * T).repeat_interleave(P)  # unused: the row's first token
        fixed_labels = torch.full((B * P,), IGNORE, dtype=torch.long)
        positions[slot] = flat
        fixed_labels[slot] = labels
        return MaskedBatch(out, positions, fixed_labels)


def _shift_right(x: torch.Tensor) -> torch.Tensor:
    """x[:, t-1] at t (False at t = 0): "the previous token is maskable"."""
    out = torch.zeros_like(x)
    out[:, 1:] = x[:, :-1]
    return out
