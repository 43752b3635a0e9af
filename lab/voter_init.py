"""How fast a fresh head can start to learn, by its initialisation: the plain linear head, the
Voters Module as it is built (classifiers N(0, 0.02), inner layers He-normal) and the Voters
Module with N(0, 0.02) everywhere (BERT's rule, the engine's before 2026-11-23).

On a real encoder's last hidden states of real sentences (every real token's vector, the
features a token head reads) and random labels, one forward and backward pass of each head in
training mode, averaged over seeds:

- ``grad_features``: the norm of the loss's gradient with respect to the features, what flows
  back into the encoder;
- ``grad_classifier``: the norm of the classifiers' weight gradient;
- ``logit_std``: the spread of the logits. Under Adam every weight moves by about lr a step
  whatever its gradient, so how fast the logits move scales with the activations the classifier
  reads, which this shows.

    python -m lab.voter_init --model models/e5-small \\
        --conll ../shared/data/conll2003_en/eng.train --out lab/results
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch
from torch import nn

from xlt_engine import provenance
from xlt_engine.data.conll import read_conll
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.model import load_encoder
from xlt_engine.model.heads import LINEAR, VotersModule

HEADS = ("linear", "voters", "voters-bert-init")


def features(model: str, conll: str, sentences: int, max_len: int) -> torch.Tensor:
    """[N, H] last hidden states of every real token of the file's first ``sentences``."""
    encoder = load_encoder(model).eval()
    tok = load_tokenizer(model)
    sents = read_conll(conll).sentences[:sentences]
    rows = [tok.encode(" ".join(s.tokens))[:max_len] for s in sents]
    ids = torch.full((len(rows), max(map(len, rows))), tok.pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    with torch.no_grad():
        hidden = encoder(ids, mask)
    return hidden[mask.bool()].float()


def build(kind: str, hidden: int, labels: int, voters: int) -> VotersModule:
    if kind == "linear":
        return VotersModule(hidden, labels, 1, [LINEAR])
    head = VotersModule(hidden, labels, voters)
    if kind == "voters-bert-init":
        for voter in head.voters:
            nn.init.normal_(voter.fc_in.weight, std=0.02)
            nn.init.normal_(voter.fc_out.weight, std=0.02)
    return head


def measure(feats: torch.Tensor, kind: str, labels: int, voters: int, seeds: int) -> dict:
    rows = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        target = torch.randint(0, labels, (feats.shape[0],))
        head = build(kind, feats.shape[1], labels, voters).train()
        x = feats.clone().requires_grad_(True)
        logits = head(x)
        VotersModule.loss(logits, target).backward()
        grad_cls = torch.cat([v.classifier.weight.grad.flatten() for v in head.voters])
        rows.append((x.grad.norm().item(), grad_cls.norm().item(), logits.std().item()))
    mean = torch.tensor(rows).mean(0).tolist()
    return dict(zip(("grad_features", "grad_classifier", "logit_std"), mean, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an encoder folder (e.g. models/e5-small)")
    ap.add_argument("--conll", required=True, help="a CoNLL file whose sentences are read")
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--labels", type=int, default=9, help="classes (CoNLL's IOB2 tags: 9)")
    ap.add_argument("--voters", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", help="a folder for voter_init_cpu_<date>.json")
    args = ap.parse_args()
    feats = features(args.model, args.conll, args.sentences, args.max_len)
    results = {k: measure(feats, k, args.labels, args.voters, args.seeds) for k in HEADS}
    ref = results["linear"]
    print(
        f"features: {feats.shape[0]} tokens x {feats.shape[1]}, rms {feats.pow(2).mean().sqrt():.3f}"
    )
    print(
        "| head | grad to features | grad of classifiers | logit std | features grad / linear's |"
    )
    print("|---|---|---|---|---|")
    for k, r in results.items():
        ratio = r["grad_features"] / ref["grad_features"]
        print(
            f"| {k} | {r['grad_features']:.3e} | {r['grad_classifier']:.3e} | "
            f"{r['logit_std']:.3e} | {ratio:.3f} |"
        )
    if args.out:
        cpu = torch.device("cpu")
        record = provenance.environment(cpu) | {
            "command": "python -m lab.voter_init " + shlex.join(sys.argv[1:]),
            "tokens": feats.shape[0],
            "feature_rms": feats.pow(2).mean().sqrt().item(),
            "results": results,
        }
        path = provenance.result_file(args.out, "voter_init", cpu)
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
