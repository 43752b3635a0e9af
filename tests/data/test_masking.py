"""MLM masking: only maskable tokens, exact per-row counts, 80/10/10, whole words, fixed counts."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlt_engine.data.masking import IGNORE, MlmMasker
from xlt_engine.data.tokenizer import default_tokenizer

TOK = default_tokenizer()
VOCAB = TOK.vocab
SPECIAL = {TOK.pad_id, TOK.unk_id, TOK.cls_id, TOK.sep_id, TOK.mask_id}
WORD_PIECES = [i for i, t in enumerate(VOCAB) if not t.startswith("##") and i not in SPECIAL]
CONT_PIECES = [i for i, t in enumerate(VOCAB) if t.startswith("##")]


def random_batch(g, B, T, unk_rate=0.05):
    """[CLS] words (a start piece then 0-3 ## pieces) [SEP] [PAD]..., random lengths."""
    ids = torch.full((B, T), TOK.pad_id)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = int(torch.randint(2, T + 1, (1,), generator=g))
        row = [TOK.cls_id]
        while len(row) < n - 1:
            if torch.rand(1, generator=g) < unk_rate:
                row.append(TOK.unk_id)
                continue
            row.append(WORD_PIECES[int(torch.randint(len(WORD_PIECES), (1,), generator=g))])
            for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
                row.append(CONT_PIECES[int(torch.randint(len(CONT_PIECES), (1,), generator=g))])
        row = [*row[: n - 1], TOK.sep_id]
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return ids, mask


def maskable(ids, mask):
    special = torch.tensor([i in SPECIAL for i in range(len(VOCAB))])
    return mask.bool() & ~special[ids]


def check_batch(masker, ids, mask, out):
    B, T = ids.shape
    ok = maskable(ids, mask)
    chosen = torch.zeros(B * T, dtype=torch.bool)
    valid = out.labels != IGNORE
    chosen[out.positions[valid]] = True
    chosen = chosen.view(B, T)
    assert not (chosen & ~ok).any(), "a special or padding token was masked"
    assert (out.labels[valid] == ids.flatten()[out.positions[valid]]).all()
    # tokens not chosen are untouched
    assert torch.equal(out.input_ids[~chosen], ids[~chosen])
    n = ok.sum(1)
    k = torch.where(n > 0, (n * masker.probability).round().long().clamp(min=1), 0)
    if masker.max_predictions is not None:
        k = k.clamp(max=masker.max_predictions)
    return chosen, n, k


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), B=st.integers(1, 6), T=st.integers(2, 40))
def test_token_masking_properties(seed, B, T):
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_batch(g, B, T)
    masker = MlmMasker.from_tokenizer(TOK)
    out = masker(ids, mask, torch.Generator().manual_seed(seed))
    chosen, _n, k = check_batch(masker, ids, mask, out)
    assert torch.equal(chosen.sum(1), k)  # exactly round(15%) per row, at least one
    # positions ascend and are unique
    assert (out.positions[1:] > out.positions[:-1]).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), B=st.integers(1, 6), T=st.integers(2, 40))
def test_whole_word_masking_properties(seed, B, T):
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_batch(g, B, T)
    masker = MlmMasker.from_tokenizer(TOK, whole_word=True)
    out = masker(ids, mask, torch.Generator().manual_seed(seed))
    chosen, _n, k = check_batch(masker, ids, mask, out)
    assert (chosen.sum(1) <= k).all()
    ok = maskable(ids, mask)
    cont = torch.tensor([t.startswith("##") for t in VOCAB])[ids]
    for b in range(B):
        # a ## piece is chosen exactly when the piece before it is (same word)
        for t in range(1, T):
            if ok[b, t] and cont[b, t] and ok[b, t - 1]:
                assert chosen[b, t] == chosen[b, t - 1]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), P=st.integers(1, 5), whole=st.booleans())
def test_fixed_prediction_count(seed, P, whole):
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_batch(g, 4, 48)
    masker = MlmMasker.from_tokenizer(TOK, whole_word=whole, max_predictions=P)
    out = masker(ids, mask, torch.Generator().manual_seed(seed))
    assert out.positions.shape == out.labels.shape == (4 * P,)
    chosen, _n, k = check_batch(masker, ids, mask, out)
    for b in range(4):
        slots = out.labels[b * P : (b + 1) * P]
        used = int((slots != IGNORE).sum())
        assert used == int(chosen[b].sum())
        assert (slots[used:] == IGNORE).all()  # used slots first, padding after
        assert (out.positions[b * P + used : (b + 1) * P] == b * 48).all()
        assert ((out.positions[b * P : b * P + used] // 48) == b).all()
        if not whole:
            assert used == int(k[b])


def test_rate_and_80_10_10_split():
    g = torch.Generator().manual_seed(1)
    ids, mask = random_batch(g, 256, 128, unk_rate=0.0)
    masker = MlmMasker.from_tokenizer(TOK)
    out = masker(ids, mask, torch.Generator().manual_seed(2))
    ok = maskable(ids, mask)
    rate = len(out.positions) / int(ok.sum())
    assert abs(rate - 0.15) < 0.005
    after = out.input_ids.flatten()[out.positions]
    n = len(after)
    to_mask = (after == TOK.mask_id).sum().item() / n
    kept = (after == out.labels).sum().item() / n
    random_ = 1 - to_mask - kept
    sd = math.sqrt(0.1 * 0.9 / n)
    assert abs(to_mask - 0.8) < 4 * math.sqrt(0.8 * 0.2 / n)
    # a random draw equal to the original counts as kept: the expected share is 0.1 * (1 + 1/V')
    assert abs(kept - 0.1) < 4 * sd + 0.1 / len(masker.random_pool)
    assert abs(random_ - 0.1) < 4 * sd
    # random replacements are never special tokens
    assert not any(int(t) in SPECIAL for t in after[(after != TOK.mask_id)])


def test_seeded_and_reproducible():
    g = torch.Generator().manual_seed(0)
    ids, mask = random_batch(g, 8, 64)
    masker = MlmMasker.from_tokenizer(TOK, whole_word=True)
    a = masker(ids, mask, torch.Generator().manual_seed(5))
    b = masker(ids, mask, torch.Generator().manual_seed(5))
    c = masker(ids, mask, torch.Generator().manual_seed(6))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.positions, b.positions)
    assert not torch.equal(a.positions, c.positions)
    assert torch.equal(ids, random_batch(torch.Generator().manual_seed(0), 8, 64)[0])  # untouched


def test_positions_feed_fused_mlm_loss():
    """The compact rows give the same loss as a full-logit cross-entropy at masked positions."""
    from xlt_engine.kernels import fused_mlm_loss

    g = torch.Generator().manual_seed(3)
    ids, mask = random_batch(g, 4, 32)
    out = MlmMasker.from_tokenizer(TOK, max_predictions=6)(ids, mask, g)
    V, H = len(VOCAB), 16
    hidden = torch.randn(4, 32, H, dtype=torch.float64)
    weight, bias = torch.randn(V, H, dtype=torch.float64), torch.randn(V, dtype=torch.float64)
    loss = fused_mlm_loss(hidden.view(-1, H)[out.positions], weight, bias, out.labels)
    full_labels = torch.full((4 * 32,), IGNORE)
    valid = out.labels != IGNORE
    full_labels[out.positions[valid]] = out.labels[valid]
    ref = torch.nn.functional.cross_entropy(hidden.view(-1, H) @ weight.T + bias, full_labels)
    torch.testing.assert_close(loss, ref)


def test_bad_input():
    with pytest.raises(ValueError, match="probability must be in"):
        MlmMasker.from_tokenizer(TOK, probability=0.0)
    with pytest.raises(ValueError, match="max_predictions must be >= 1"):
        MlmMasker.from_tokenizer(TOK, max_predictions=0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MlmMasker.from_tokenizer(TOK, mask_ratio=0.95, random_ratio=0.1)
    masker = MlmMasker.from_tokenizer(TOK)
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\]"):
        masker(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        masker(torch.full((1, 4), len(VOCAB)))
    with pytest.raises(ValueError, match="attention_mask shape"):
        masker(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3))
