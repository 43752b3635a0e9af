"""benchmarks/padding_share.py: first-fit decreasing packing and the shares it reports."""

import numpy as np

from benchmarks.padding_share import packed_rows, shares


def test_first_fit_decreasing_packs_into_the_fewest_rows_here():
    assert packed_rows(np.array([5, 3, 3, 2, 2, 1]), 8) == 2  # 5+3, 3+2+2+1
    assert packed_rows(np.array([8, 8, 1]), 8) == 3
    assert packed_rows(np.array([4]), 8) == 1


def test_equal_lengths_have_no_padding_and_nothing_to_pack():
    r = shares(np.full(64, 16), batch=16, pad=8, seed=0)
    assert r == {"pad": 8, "real_over_padded": 1.0, "real_over_packed": 1.0}


def test_mixed_lengths_padding_and_packing():
    lengths = np.array([8, 1] * 8)  # sorted batches: padding waste depends on the mix
    r = shares(lengths, batch=16, pad=8, seed=0)
    assert r["real_over_padded"] == 72 / 128  # one batch of 16 rows of 8
    assert r["real_over_packed"] == 72 / (9 * 8)  # 8 full rows + one row of eight 1s
