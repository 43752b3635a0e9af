"""lab/voter_heads.py: the diagnostic patch lets only the first voter's gradient reach the
encoder (in training only), and the per-voter scores are those of each voter alone."""

import torch

from lab.voter_heads import first_voter_trains_encoder
from xlt_engine.model import VotersModule


def test_only_the_first_voter_trains_the_features(monkeypatch):
    monkeypatch.setattr(VotersModule, "forward", VotersModule.forward)  # restored afterwards
    torch.manual_seed(0)
    voters = VotersModule(16, 3, num_voters=3, widths=[0, 12, 20], dropout=0.0)
    x = torch.randn(5, 16)
    want = voters(x)
    first_voter_trains_encoder()
    for training in (True, False):
        voters.train(training)
        feats = x.clone().requires_grad_(True)
        logits = voters(feats)
        torch.testing.assert_close(logits, want)  # the same logits, patched or not
        for i in range(3):
            (g,) = torch.autograd.grad(logits[i].sum(), feats, retain_graph=True)
            # in training, voters 1 and 2 read detached features; in evaluation all are joined
            assert (g.abs().sum() > 0) == (i == 0 or not training), (training, i)
        # every voter's own weights still learn
        logits.sum().backward()
        assert all(v.classifier.weight.grad.abs().sum() > 0 for v in voters.voters)
        voters.zero_grad()
