import pytest
import torch
import torch.nn.functional as F

from xlt_engine.model import SequenceClassificationHead, TokenClassificationHead, VotersModule
from xlt_engine.model.heads import LINEAR, default_voter_widths


def test_voters_shapes_and_widths():
    vm = VotersModule(hidden_size=40, num_labels=9, num_voters=3)
    assert vm.widths == [30, 40, 50]  # 0.75H, H, 1.25H
    assert vm(torch.randn(4, 7, 40)).shape == (3, 4, 7, 9)  # per token
    assert vm(torch.randn(5, 40)).shape == (3, 5, 9)  # [CLS]
    assert [v.fc_in.out_features for v in vm.voters] == [30, 40, 50]


def test_voters_are_independent_and_differ():
    vm = VotersModule(hidden_size=16, num_labels=2, num_voters=4).eval()
    out = vm(torch.randn(8, 16))
    assert not torch.allclose(out[0], out[1])
    params = [set(map(id, v.parameters())) for v in vm.voters]
    assert all(not (a & b) for i, a in enumerate(params) for b in params[i + 1 :])
    out.sum().backward()
    assert all(
        v.fc_in.weight.grad is not None and v.fc_in.weight.grad.abs().sum() > 0 for v in vm.voters
    )


def test_voter_computation_is_h_d_h_then_classifier():
    vm = VotersModule(hidden_size=12, num_labels=3, num_voters=1).eval()
    x = torch.randn(5, 12)
    v = vm.voters[0]
    want = v.classifier(F.gelu(v.fc_out(F.gelu(v.fc_in(x)))))
    torch.testing.assert_close(vm(x)[0], want)


def test_single_voter_is_one_mlp_voter_and_its_probs_are_its_own():
    vm = VotersModule(hidden_size=12, num_labels=3, num_voters=1).eval()
    assert vm.widths == [12]
    x = torch.randn(6, 12)
    logits = vm(x)
    assert logits.shape == (1, 6, 3)
    torch.testing.assert_close(VotersModule.probs(logits), logits[0].softmax(-1))


def test_probs_is_mean_of_voter_probabilities():
    logits = torch.randn(3, 4, 5)
    want = (logits[0].softmax(-1) + logits[1].softmax(-1) + logits[2].softmax(-1)) / 3
    torch.testing.assert_close(VotersModule.probs(logits), want)
    torch.testing.assert_close(
        VotersModule.probs(logits.bfloat16()).sum(-1), torch.ones(4), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(num_voters=0), "num_voters"),
        (dict(num_labels=1), "num_labels"),
        (dict(num_voters=2, widths=[8]), "widths"),
        (dict(num_voters=2, widths=[8, -1]), "widths"),
    ],
)
def test_voters_bad_arguments(kw, msg):
    args = dict(hidden_size=8, num_labels=2)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        VotersModule(**args)


def test_default_widths_spread():
    assert default_voter_widths(768, 3) == [576, 768, 960]
    assert default_voter_widths(768, 5) == [576, 672, 768, 864, 960]


def test_sequence_head_reads_cls_only():
    head = SequenceClassificationHead(8, 2).eval()
    h = torch.randn(3, 5, 8)
    out = head(h)
    assert out.shape == (3, 2)
    h2 = h.clone()
    h2[:, 1:] = torch.randn(3, 4, 8)
    torch.testing.assert_close(head(h2), out)


def test_token_head_shape():
    head = TokenClassificationHead(8, 9).eval()
    h = torch.randn(2, 6, 8)
    out = head(h)
    assert out.shape == (2, 6, 9)
    torch.testing.assert_close(out[1, 3], head.classifier(h[1, 3]))


def test_a_linear_voter_is_dropout_then_one_linear_layer():
    """Issue 17 (1): the plain linear head of standard fine-tuning (-VM, direct transfer) is one
    voter of width LINEAR, with no hidden layers; a voter of width H (voters = 1) has two."""
    torch.manual_seed(0)
    vm = VotersModule(hidden_size=12, num_labels=3, num_voters=1, widths=[LINEAR])
    assert sorted(n for n, _ in vm.named_parameters()) == [
        "voters.0.classifier.bias",
        "voters.0.classifier.weight",
    ]
    x = torch.randn(6, 12)
    v = vm.voters[0]
    torch.testing.assert_close(vm.eval()(x)[0], v.classifier(x))
    vm.train()  # dropout on the input, as BERT's classification heads do
    assert not torch.equal(vm(x)[0], v.classifier(x))
    mixed = VotersModule(hidden_size=12, num_labels=3, num_voters=2, widths=[LINEAR, 12])
    assert mixed(x).shape == (2, 6, 3) and not hasattr(mixed.voters[0], "fc_in")
    with pytest.raises(ValueError, match=">= 0"):
        VotersModule(hidden_size=12, num_labels=3, num_voters=1, widths=[-1])


def test_voter_inner_layers_are_he_normal_and_classifiers_bert():
    """The inner layers N(0, 2 / fan_in), every classifier N(0, 0.02), biases zero: with
    N(0, 0.02) inside too, a voter's classifier read features ~20x smaller than a linear
    head's (lab/voter_init.py)."""
    torch.manual_seed(0)
    vm = VotersModule(hidden_size=384, num_labels=9, num_voters=3)
    for v in vm.voters:
        for layer in (v.fc_in, v.fc_out):
            want = (2.0 / layer.in_features) ** 0.5
            assert abs(layer.weight.std().item() / want - 1) < 0.05
            assert not layer.bias.any()
        assert abs(v.classifier.weight.std().item() / 0.02 - 1) < 0.05
        assert not v.classifier.bias.any()


def test_fresh_voters_learn_at_least_as_fast_as_a_linear_head():
    """Under Adam each weight moves by about lr a step, so a head learns as fast as its
    classifier's inputs are large. Features of e5-small's size and scale (H = 384, rms 0.26),
    labels a linear function of them: in 10 steps the voters' loss falls at least as far as a
    linear head's (measured: 2.5x as far; with N(0, 0.02) inner layers 0.5x)."""
    hidden, classes = 384, 9
    gen = torch.Generator().manual_seed(0)
    x = 0.26 * torch.randn(512, hidden, generator=gen)
    y = (x @ torch.randn(hidden, classes, generator=gen)).argmax(-1)

    def drop(widths):
        torch.manual_seed(1)
        vm = VotersModule(hidden, classes, num_voters=len(widths), widths=widths)
        opt = torch.optim.AdamW(vm.parameters(), lr=1e-4)
        first = VotersModule.loss(vm(x), y).item()
        for _ in range(10):
            loss = VotersModule.loss(vm(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return first - loss.item()

    linear = drop([LINEAR])
    assert linear > 0
    assert drop(default_voter_widths(hidden, 3)) > linear
