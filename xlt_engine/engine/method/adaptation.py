"""Paper 003's contrastive language adaptation with a parallel file (``data.parallel``): the
translations as extra labeled data (phase 1, with or without Label Alignment; alone it is the
translate-train baseline), and Semantic Alignment (phase 2, Eq. 4-5).

Semantic Alignment: for each source item x_i of the parallel file, one group of the batch holds
x_i (the anchor), its b translations (positives) and b source items of the parallel file with
another label (negatives, drawn per epoch from the seed; fewer when fewer exist). With L2-normalised
sentence representations h and temperature tau,

    L_SA(i) = -sum_t log( exp(h_i . h_i^(t) / tau) / sum_{k in group, k != i} exp(h_i . h_k / tau) )

the loss of a batch is its cross-entropy over every row plus ``sa_weight`` x the mean of L_SA
over its groups. Groups are small (2b + 1 rows), so this is plain torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xlt_engine.data.batching import length_limit, shard
from xlt_engine.data.parallel import ParallelItem
from xlt_engine.data.task import Encoded, TaskData, encode, make_batch
from xlt_engine.engine.train.distributed import rank_world


def translations_data(items: Sequence[ParallelItem], path) -> TaskData:
    """Every translation of ``items`` as labeled sequence data (phase 1's extra examples)."""
    rows = [(t, p, it.label) for it in items for _, t, p in it.translations]
    pairs = [p for _, p, _ in rows] if any(p is not None for _, p, _ in rows) else None
    return TaskData(
        path,
        "jsonl",
        "sequence",
        [t for t, _, _ in rows],
        pairs,
        [y for *_, y in rows],
        list(range(1, len(rows) + 1)),
    )


def group_data(items: Sequence[ParallelItem], path) -> tuple[TaskData, list[list[int]]]:
    """The sources (rows 0..n-1) then the translations of ``items`` as labeled data, and each
    item's translation rows."""
    sources = [(it.text, it.text_pair, it.label) for it in items]
    trans = translations_data(items, path)
    rows, start = [], len(items)
    for it in items:
        rows.append(list(range(start, start + len(it.translations))))
        start += len(it.translations)
    pairs = None
    if any(p is not None for _, p, _ in sources):
        pairs = [p for _, p, _ in sources] + (trans.pairs or [None] * len(trans))
    data = TaskData(
        path,
        "jsonl",
        "sequence",
        [t for t, _, _ in sources] + trans.inputs,
        pairs,
        [y for *_, y in sources] + trans.labels,
        list(range(1, len(sources) + len(trans) + 1)),
    )
    return data, rows


class SABatches:
    """A ``DataSource`` of Semantic Alignment groups: per epoch the items are shuffled and each
    gets its negatives (from (seed, epoch)); ``groups`` items make a batch; batches are sharded
    round-robin over the ranks. A batch is ``make_batch``'s dict plus ``sa_anchor`` [G] (the
    anchors' rows in the batch), ``sa_member`` [G, K] (the other rows of each group, -1 padded)
    and ``sa_positive`` [G, K] (which of them are translations)."""

    def __init__(
        self,
        enc: Encoded,
        labels: Sequence[int],
        translations: list[list[int]],
        pad_id: int,
        groups: int,
        seed: int,
    ):
        self.enc, self.pad_id, self.groups, self.seed = enc, pad_id, max(1, groups), seed
        self.labels = np.asarray(labels)
        self.translations = translations
        self.limit = length_limit(enc.lengths)
        self.rank, self.world = rank_world()
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def _order(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.translations))
            batches = [order[i : i + self.groups] for i in range(0, len(order), self.groups)]
            self._epoch = (epoch, shard(batches, self.rank, self.world))
        return self._epoch[1]

    def num_batches(self, epoch: int) -> int:
        return len(self._order(epoch))

    def negatives(self, epoch: int, item: int) -> np.ndarray:
        """``item``'s negatives in ``epoch``: as many source items of another label as it has
        translations (fewer when fewer exist), drawn from (seed, epoch, item)."""
        others = np.flatnonzero(self.labels[: len(self.translations)] != self.labels[item])
        b = min(len(self.translations[item]), len(others))
        rng = np.random.default_rng([self.seed, epoch, item])
        return np.sort(rng.choice(others, b, replace=False)) if b else others[:0]

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        rows: list[int] = []
        anchors, members, positive = [], [], []
        for item in self._order(epoch)[index].tolist():
            pos, neg = self.translations[item], self.negatives(epoch, item).tolist()
            anchors.append(len(rows))
            first = len(rows) + 1
            rows += [item, *pos, *neg]
            members.append(list(range(first, len(rows))))
            positive.append([True] * len(pos) + [False] * len(neg))
        width = max(len(m) for m in members)
        out = make_batch(self.enc, np.asarray(rows), self.pad_id, limit=self.limit)
        out["sa_anchor"] = torch.tensor(anchors)
        out["sa_member"] = torch.tensor([m + [-1] * (width - len(m)) for m in members])
        out["sa_positive"] = torch.tensor([p + [False] * (width - len(p)) for p in positive])
        return out


def semantic_alignment_loss(
    reps: torch.Tensor,
    anchor: torch.Tensor,
    member: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over groups of Eq. 4 (see the module docstring): reps [B, H]; anchor [G];
    member [G, K] rows (-1: padding); positive [G, K]. fp32."""
    n = F.normalize(reps.float(), dim=-1)
    valid = member >= 0
    s = (n[anchor][:, None, :] * n[member.clamp(min=0)]).sum(-1) / temperature  # [G, K]
    s = s.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(s, dim=1, keepdim=True)
    per = -torch.where(positive & valid, s - lse, 0.0).sum(1)  # [G]
    has = (positive & valid).any(1)  # a group with no translation adds nothing
    return torch.where(has, per, 0.0).sum() / has.sum().clamp(min=1)


def sa_encoded(
    items: Sequence[ParallelItem], path, tok, labels: Sequence[str], max_len: int
) -> tuple[Encoded, list[int], list[list[int]]]:
    """Phase 2's data: the encoded sources then translations, the sources' label ids and each
    item's translation rows."""
    data, rows = group_data(items, path)
    enc = encode(data, tok, labels, max_len)
    return enc, [int(enc.targets[i][0]) for i in range(len(items))], rows
