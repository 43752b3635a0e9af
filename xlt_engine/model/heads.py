"""Task heads on top of ``BertEncoder``: [CLS] sequence classification, per-token
classification, and the Voters Module of the reference paper.

``VotersModule`` holds M voters; voter i is an independent feature encoder H -> d_i -> H (two
linear layers, GELU, dropout) followed by its own linear classifier H -> C. The inner widths d_i
differ slightly (by default spread evenly over 0.75H .. 1.25H) so the voters agree on easy inputs
and disagree on doubtful ones. Logits come back stacked as [M, ..., C]; training losses average
over voters, prediction uses the mean of the voters' probabilities. A voter of width 0 is a
linear voter: dropout, then the classifier H -> C, nothing between. One linear voter is the plain
linear head of standard BERT fine-tuning (``model.head = "linear"``: the direct-transfer baseline
and the paper's "-VM" ablation); M = 1 with width H is one MLP voter, a different thing.

Initialisation (the paper is silent): every classifier is BERT's N(0, 0.02), as the linear head;
a voter's two inner layers are He-normal, N(0, 2 / fan_in) (``he_init_``), so its classifier
reads features of the encoder's scale. With N(0, 0.02) there too, each inner layer scales its
input by about 0.02 sqrt(H) and GELU halves it again, so a voter's logits start some 20x smaller
than a linear head's and, under Adam, move that much slower. Measured on multilingual-e5-small's
features of CoNLL English (``lab/voter_init.py``): the gradient reaching the encoder was
40x smaller than through a linear head (He-normal: 2.4x).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xlt_engine.model.bert import Dropout, gelu, init_bert_weights


class LinearHead(nn.Module):
    """Dropout, then one linear layer H -> C (standard BERT fine-tuning); the subclasses pick
    the positions."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, std: float = 0.02):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        init_bert_weights(self, std)


class SequenceClassificationHead(LinearHead):
    """hidden [B, T, H] -> logits [B, C] from the [CLS] (first) position."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden[:, 0]))  # (B, C)


class TokenClassificationHead(LinearHead):
    """hidden [B, T, H] -> logits [B, T, C] for every position."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))  # (B, T, C)


def default_voter_widths(hidden_size: int, num_voters: int) -> list[int]:
    """Inner widths spread evenly over 0.75H .. 1.25H (H itself for a single voter)."""
    if num_voters == 1:
        return [hidden_size]
    lo, hi = 0.75 * hidden_size, 1.25 * hidden_size
    return [round(lo + (hi - lo) * i / (num_voters - 1)) for i in range(num_voters)]


LINEAR = 0  # the width of a linear voter: dropout, then the classifier


class Voter(nn.Module):
    """features [..., H] -> logits [..., C] through H -> d -> H and a linear classifier; with
    ``width = LINEAR`` (0), dropout and the classifier alone."""

    def __init__(self, hidden_size: int, width: int, num_labels: int, dropout: float):
        super().__init__()
        self.linear = width == LINEAR
        if not self.linear:
            self.fc_in = nn.Linear(hidden_size, width)
            self.fc_out = nn.Linear(width, hidden_size)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        if not self.linear:
            x = self.dropout(gelu(self.fc_in(x)))
            x = self.dropout(gelu(self.fc_out(x)))
        return self.classifier(x)


def he_init_(layer: nn.Linear) -> None:
    """He-normal weights, N(0, 2 / fan_in), for a linear layer followed by GELU: the output keeps
    the input's second moment (zero bias). Nothing on the meta device."""
    if layer.weight.is_meta:
        return
    nn.init.normal_(layer.weight, mean=0.0, std=(2.0 / layer.in_features) ** 0.5)


class VotersModule(nn.Module):
    """M voters over the same features: features [..., H] -> logits [M, ..., C]."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        num_voters: int = 3,
        widths: Sequence[int] | None = None,
        dropout: float = 0.1,
        std: float = 0.02,
    ):
        super().__init__()
        if num_voters < 1:
            raise ValueError(f"num_voters must be >= 1, got {num_voters}")
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        if widths is None:
            widths = default_voter_widths(hidden_size, num_voters)
        widths = list(widths)
        if len(widths) != num_voters:
            raise ValueError(f"widths has {len(widths)} entries for num_voters={num_voters}")
        if any(int(w) < 0 for w in widths):
            raise ValueError(f"voter widths must be >= 0 (0: a linear voter), got {widths}")
        self.num_labels = num_labels
        self.widths = [int(w) for w in widths]
        self.voters = nn.ModuleList(Voter(hidden_size, w, num_labels, dropout) for w in self.widths)
        init_bert_weights(self, std)
        for voter in self.voters:
            if not voter.linear:
                he_init_(voter.fc_in)
                he_init_(voter.fc_out)

    @property
    def num_voters(self) -> int:
        return len(self.voters)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., H] (e.g. [B, H] for [CLS], [B, T, H] per token) -> [M, ..., C]."""
        return torch.stack([voter(features) for voter in self.voters])

    @staticmethod
    def probs(logits: torch.Tensor) -> torch.Tensor:
        """[M, ..., C] voter logits -> [..., C] mean of the voters' probabilities (fp32)."""
        return logits.float().softmax(dim=-1).mean(dim=0)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Cross-entropy of ``[M, N, C]`` voter logits against ``[N]`` targets (``ignore_index``
        rows ignored), averaged over voters (each voter sees the same rows: the mean over all)."""
        M, N, C = logits.shape
        return F.cross_entropy(
            logits.float().reshape(M * N, C), targets.repeat(M), ignore_index=ignore_index
        )
