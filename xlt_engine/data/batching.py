"""Sampling and batching: bilingual resampling, length-bucket batches, rank sharding, padding.

- ``resample(sizes, shares, epoch_size, seed, epoch)``: mixes corpora (e.g. source and target
  unlabeled text) so corpus i contributes ``shares[i]`` of each epoch (default equal), drawing
  whole random permutations of a small corpus (up-sampling: every example as often as possible,
  the remainder without repeats) and a random subset of a large one (down-sampling).
- ``length_batches(lengths, ...)``: examples of similar length batched together (sorted within
  shuffled pools of ``pool_batches`` batches), a fixed batch size and/or a token budget counted
  on the padded length; batch order shuffled. Padding is to a multiple of ``PAD_MULTIPLE`` (32:
  few distinct shapes, so a GPU warms up few attention plans and kernel specialisations), never
  past the longest sequence of the data rounded to 8 (``length_limit``).
- ``shard(batches, rank, world_size)``: every rank gets the same number of batches (the last
  ones repeat batches from the start, as ``DistributedSampler`` does, unless ``drop_last``).
- ``pad_batch``: ragged id arrays -> ``[B, T]`` tensors, T rounded up to ``pad_multiple``.

All randomness comes from ``numpy.random.default_rng((seed, epoch))``: reproducible per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE = -100


def resample(
    sizes: Sequence[int],
    shares: Sequence[float] | None = None,
    epoch_size: int | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> np.ndarray:
    """One epoch of ``(corpus, index)`` pairs, int64 ``[epoch_size, 2]``, in random order.

    ``shares``: fraction of the epoch per corpus (None: equal; normalised to sum 1).
    ``epoch_size``: None gives the sum of ``sizes`` (the corpora's own total, redistributed).
    """
    sizes = [int(s) for s in sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"every corpus needs at least one example, got sizes {sizes}")
    shares = [1.0] * len(sizes) if shares is None else [float(x) for x in shares]
    if len(shares) != len(sizes) or any(not x >= 0 for x in shares) or sum(shares) <= 0:
        raise ValueError(f"shares {shares} must be {len(sizes)} non-negative numbers, not all 0")
    total = sum(sizes) if epoch_size is None else int(epoch_size)
    if total <= 0:
        raise ValueError(f"epoch_size must be positive, got {epoch_size}")
    rng = np.random.default_rng((seed, epoch))
    w = np.asarray(shares) / sum(shares)
    counts = np.floor(w * total).astype(np.int64)
    # the rounding remainder goes to the largest fractional parts (deterministic)
    rest = total - counts.sum()
    counts[np.argsort(-(w * total - counts), kind="stable")[:rest]] += 1
    parts = []
    for c, (size, count) in enumerate(zip(sizes, counts, strict=True)):
        reps, extra = divmod(int(count), size)
        idx = [rng.permutation(size) for _ in range(reps)] + [rng.permutation(size)[:extra]]
        idx = np.concatenate(idx)
        parts.append(np.stack([np.full(len(idx), c), idx], axis=1))
    out = np.concatenate(parts)
    return out[rng.permutation(len(out))]


def spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``arange(starts[k], starts[k] + lengths[k])`` for every k, back to back (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.asarray(starts, dtype=np.int64) - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(total, dtype=np.int64)


PAD_MULTIPLE = 32  # sequence lengths round up to this (at max_len 128: 4 shapes an epoch)


def padded_length(n: int, pad_multiple: int = PAD_MULTIPLE, limit: int | None = None) -> int:
    """``n`` rounded up to a multiple of ``pad_multiple``, but not past ``limit`` (the longest
    sequence the data holds, so a bucket never asks the model for more positions than it
    has; never below ``n``)."""
    t = -(-n // pad_multiple) * pad_multiple
    return max(n, min(t, limit)) if limit is not None else t


def length_limit(lengths: np.ndarray) -> int | None:
    """The cap for ``padded_length``: the longest length, rounded up to 8."""
    return -(-int(lengths.max()) // 8) * 8 if len(lengths) else None


def length_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int | None = 32,
    max_tokens: int | None = None,
    pad_multiple: int = PAD_MULTIPLE,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    pool_batches: int = 50,
) -> list[np.ndarray]:
    """Index arrays of batches of similar-length examples.

    A batch holds at most ``batch_size`` examples and at most ``max_tokens`` padded tokens
    (``len(batch) * padded_length(longest)``); at least one of the two limits must be given.
    ``shuffle``: examples are shuffled, then sorted by length within pools of
    ``pool_batches * batch_size`` (or ``pool_batches`` token budgets), and the batches shuffled;
    without it, the batches follow the input order (evaluation).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    limit = length_limit(lengths)
    if batch_size is None and max_tokens is None:
        raise ValueError("give batch_size, max_tokens or both")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(lengths) and lengths.min() < 1:
        raise ValueError(f"example {int(lengths.argmin())} has length {int(lengths.min())}")
    if max_tokens is not None and len(lengths):
        longest = padded_length(int(lengths.max()), pad_multiple, limit)
        if max_tokens < longest:
            raise ValueError(
                f"max_tokens {max_tokens} is below the longest example ({longest} padded tokens)"
            )
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    if shuffle:
        per_pool = pool_batches * (batch_size or max(1, max_tokens // 64))
        pools = [order[i : i + per_pool] for i in range(0, len(order), per_pool)]
        order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in pools] or [order])
    batches, cur, cur_max = [], [], 0
    for i in order:
        longest = max(cur_max, padded_length(int(lengths[i]), pad_multiple, limit))
        full = batch_size is not None and len(cur) >= batch_size
        over = max_tokens is not None and longest * (len(cur) + 1) > max_tokens
        if cur and (full or over):
            batches.append(np.asarray(cur, dtype=np.int64))
            cur, longest = [], padded_length(int(lengths[i]), pad_multiple, limit)
        cur.append(i)
        cur_max = longest
    if cur:
        batches.append(np.asarray(cur, dtype=np.int64))
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def shard(
    batches: Sequence[np.ndarray], rank: int, world_size: int, drop_last: bool = False
) -> list[np.ndarray]:
    """Batches of ``rank`` out of ``world_size``: round-robin, the same count on every rank
    (the list padded by cycling from its start, or cut when ``drop_last``)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    batches = list(batches)
    n = len(batches)
    if drop_last:
        per_rank = n // world_size
    else:
        per_rank = -(-n // world_size)
        if n == 0:
            return []
        batches = batches + [batches[i % n] for i in range(per_rank * world_size - n)]
    return batches[rank : per_rank * world_size : world_size]


def pad_batch(
    sequences: Sequence[np.ndarray],
    pad_id: int,
    pad_multiple: int = PAD_MULTIPLE,
    labels: Sequence[np.ndarray] | None = None,
    token_type_ids: Sequence[np.ndarray] | None = None,
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad ragged sequences to ``[B, T]``, T a multiple of ``pad_multiple`` (at most
    ``limit``: ``padded_length``). Returns
    ``input_ids`` (int64), ``attention_mask`` (int64), and ``labels`` (padded with -100) and
    ``token_type_ids`` (padded with 0) when given."""
    if not len(sequences):
        raise ValueError("pad_batch got no sequences")
    B = len(sequences)
    T = padded_length(max(len(s) for s in sequences), pad_multiple, limit)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    for name, seqs, fill in (("labels", labels, IGNORE), ("token_type_ids", token_type_ids, 0)):
        if seqs is None:
            continue
        arr = np.full((B, T), fill, dtype=np.int64)
        for i, (s, ref) in enumerate(zip(seqs, sequences, strict=True)):
            if len(s) != len(ref):
                raise ValueError(f"{name}[{i}] has {len(s)} entries for {len(ref)} ids")
            arr[i, : len(s)] = s
        out[name] = torch.from_numpy(arr)
    return out
