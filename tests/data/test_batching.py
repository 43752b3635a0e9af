"""Bilingual resampling, length-bucket batching, rank sharding and padding."""

import numpy as np
import pytest
import torch

from xlt_engine.data.batching import (
    length_batches,
    length_limit,
    pad_batch,
    padded_length,
    resample,
    shard,
)


def test_resample_equal_shares_up_and_down():
    mix = resample([100, 1000], seed=0)
    assert mix.shape == (1100, 2)
    corpus, idx = mix[:, 0], mix[:, 1]
    assert (corpus == 0).sum() == 550 and (corpus == 1).sum() == 550
    small = np.bincount(idx[corpus == 0], minlength=100)
    assert small.min() >= 5 and small.max() <= 6  # whole permutations first: as even as can be
    big = idx[corpus == 1]
    assert len(np.unique(big)) == 550  # down-sampled without repeats
    assert idx[corpus == 0].max() < 100 and big.max() < 1000


def test_resample_shares_size_seed_epoch():
    mix = resample([10, 10, 10], shares=[2, 1, 1], epoch_size=1001, seed=1, epoch=3)
    assert np.bincount(mix[:, 0]).tolist() == [501, 250, 250]
    assert np.array_equal(mix, resample([10, 10, 10], [2, 1, 1], 1001, seed=1, epoch=3))
    assert not np.array_equal(mix, resample([10, 10, 10], [2, 1, 1], 1001, seed=1, epoch=4))
    assert np.bincount(resample([3, 7], shares=[0, 1])[:, 0], minlength=2).tolist() == [0, 10]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sizes=[0, 5]), "at least one example"),
        (dict(sizes=[5, 5], shares=[1]), "must be 2 non-negative"),
        (dict(sizes=[5, 5], shares=[-1, 2]), "non-negative"),
        (dict(sizes=[5], epoch_size=0), "epoch_size must be positive"),
    ],
)
def test_resample_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resample(**kwargs)


def test_length_batches_cover_everything_once_and_respect_limits():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    for kwargs in (
        dict(batch_size=32),
        dict(batch_size=None, max_tokens=4096),
        dict(batch_size=16, max_tokens=2048),
    ):
        batches = length_batches(lengths, seed=3, **kwargs)
        flat = np.concatenate(batches)
        assert length_limit(lengths) == 200

        def padded(n):
            return padded_length(n, limit=200)

        assert sorted(flat.tolist()) == list(range(1000))
        for b in batches:
            if kwargs.get("batch_size"):
                assert len(b) <= kwargs["batch_size"]
            if kwargs.get("max_tokens"):
                assert len(b) * padded(int(lengths[b].max())) <= kwargs["max_tokens"]
        # similar lengths together: far less padding than random batches of the same sizes
        waste = sum(len(b) * padded(int(lengths[b].max())) - lengths[b].sum() for b in batches)
        perm = rng.permutation(1000)
        sizes = np.cumsum([len(b) for b in batches])[:-1]
        random_waste = sum(
            len(b) * padded(int(lengths[b].max())) - lengths[b].sum() for b in np.split(perm, sizes)
        )
        assert waste < 0.3 * random_waste
    c = length_batches(lengths, 32, seed=4)
    a, b = length_batches(lengths, 32, seed=3), length_batches(lengths, 32, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))


def test_length_batches_in_order_for_evaluation():
    batches = length_batches([5, 3, 9, 1, 2], batch_size=2, shuffle=False)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_length_batches_bad_input():
    with pytest.raises(ValueError, match="give batch_size, max_tokens or both"):
        length_batches([3], batch_size=None)
    with pytest.raises(ValueError, match="max_tokens 8 is below the longest example"):
        length_batches([3, 20], batch_size=None, max_tokens=8)
    with pytest.raises(ValueError, match="example 1 has length 0"):
        length_batches([3, 0])


@pytest.mark.parametrize("n, world", [(10, 3), (9, 3), (2, 4), (7, 1)])
def test_shard_equal_counts(n, world):
    batches = [np.array([i]) for i in range(n)]
    shards = [shard(batches, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seen = sorted(int(b[0]) for s in shards for b in s)
    assert set(seen) == set(range(n))  # nothing lost, repeats only to even out
    assert len(seen) == -(-n // world) * world
    dropped = [shard(batches, r, world, drop_last=True) for r in range(world)]
    assert len({len(s) for s in dropped}) == 1 and len(dropped[0]) == n // world
    with pytest.raises(ValueError, match="rank 5 is not in"):
        shard(batches, 5, world)


def test_pad_batch():
    out = pad_batch(
        [np.array([1, 2, 3]), np.array([4])],
        pad_id=0,
        labels=[np.array([7, 8, 9]), np.array([5])],
        token_type_ids=[np.array([0, 1, 1]), np.array([0])],
    )
    assert out["input_ids"].shape == (2, 32)  # PAD_MULTIPLE
    assert out["input_ids"][1].tolist() == [4] + [0] * 31
    assert out["attention_mask"].sum(1).tolist() == [3, 1]
    assert out["labels"][0].tolist() == [7, 8, 9] + [-100] * 29
    assert out["token_type_ids"][0].tolist() == [0, 1, 1] + [0] * 29
    assert out["input_ids"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"labels\[1\] has 2 entries for 1 ids"):
        pad_batch([np.array([1]), np.array([1])], 0, labels=[np.array([1]), np.array([1, 2])])
    assert pad_batch([np.arange(9)], 0)["input_ids"].shape == (1, 32)
    assert pad_batch([np.arange(9)], 0, 8)["input_ids"].shape == (1, 16)
    assert pad_batch([np.arange(9)], 0, limit=24)["input_ids"].shape == (1, 24)


def test_an_epoch_of_task_batches_at_max_len_128_has_at_most_4_lengths(shared_data, mbert_vocab):
    """Real CoNLL English with the mBERT vocabulary: lengths padded to 32 give at most 4
    sequence lengths an epoch at max_len 128 (8 gave many more: a GPU warms up each)."""
    from xlt_engine.data import load_tokenizer
    from xlt_engine.data.task import TaskBatches, encode, read_task_file

    tok = load_tokenizer(mbert_vocab)
    data = read_task_file(shared_data / "conll2003_en" / "eng.train", "conll")
    labels = sorted({t for tags in data.labels for t in tags})
    enc = encode(data, tok, labels, 128)
    for multiple, most in ((32, 4), (8, 16)):
        batches = TaskBatches(enc, tok.pad_id, 32, None, seed=0, pad_multiple=multiple)
        lengths = {batches.batch(0, i)["input_ids"].shape[1] for i in range(batches.num_batches(0))}
        assert len(lengths) <= most and max(lengths) <= 128, (multiple, sorted(lengths))
        if multiple == 8:
            assert len(lengths) > 4, sorted(lengths)  # what the test guards against
