"""Levers on the attention of a CPU training step, side by side in one process (issue 55): the
e5-small encoder shape (12 layers, H 384, 12 heads, FFN 1,536; random weights), the bottom 3
layers and the embeddings frozen, a linear head, bf16 autocast, fused AdamW and clipping, one
batch of B 16, T 40 (a quarter of the rows padded from 30). Each variant's step is timed in
process CPU time (less disturbed by other work on the machine than wall time), the median of
``--steps`` steps, the variants alternated ``--rounds`` times; the ratio is the baseline's time
over the variant's (> 1: the variant is faster).

Variants, each a replacement of ``BertSelfAttention.forward``:

- ``sdpa``: the engine's (``scaled_dot_product_attention``; with dropout on CPU, its math path,
  which computes bf16 inputs in fp32);
- ``fused_qkv``: q, k and v from one matrix product over the three weights side by side;
- ``bf16``: attention written out as transformers' eager attention runs under autocast (both
  products in bf16, softmax in fp32), dropout as ``rand >= p``;
- ``fp32``: the same written out in fp32 (as the math path computes it).

    OMP_NUM_THREADS=1 python -m benchmarks.ab_cpu_attention --variants sdpa,fused_qkv,bf16,fp32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from xlt_engine.model.bert import BertEncoder, BertSelfAttention
from xlt_engine.model.config import BertConfig

SDPA = BertSelfAttention.forward


def _heads(self, t: torch.Tensor) -> torch.Tensor:
    B, T, _ = t.shape
    return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)


def _written_out(self, x, mask, fp32: bool):
    B, T, H = x.shape
    q, k, v = _heads(self, self.q(x)), _heads(self, self.k(x)), _heads(self, self.v(x))
    dtype = v.dtype
    with torch.autocast("cpu", enabled=not fp32):
        if fp32:
            q, k, v = q.float(), k.float(), v.float()
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
        if mask is not None:
            scores = scores.float() + torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1)
        p = self.attn_dropout
        probs = probs * (torch.rand(probs.shape) >= p).float().mul_(1 / (1 - p))
        y = torch.matmul(probs.to(v.dtype), v).to(dtype)
    return self.out(y.transpose(1, 2).reshape(B, T, H))


def _fused_qkv(self, x, mask):
    B, T, H = x.shape
    w = torch.cat([self.q.weight, self.k.weight, self.v.weight])
    b = torch.cat([self.q.bias, self.k.bias, self.v.bias])
    qkv = F.linear(x, w, b).view(B, T, 3, self.n_head, self.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_dropout)
    return self.out(y.transpose(1, 2).reshape(B, T, H))


VARIANTS = {
    "sdpa": SDPA,
    "fused_qkv": _fused_qkv,
    "bf16": lambda self, x, mask: _written_out(self, x, mask, fp32=False),
    "fp32": lambda self, x, mask: _written_out(self, x, mask, fp32=True),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="sdpa,fused_qkv,bf16,fp32")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--layers", type=int, default=12)
    args = p.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {sorted(VARIANTS)}")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30000, hidden_size=384, num_hidden_layers=args.layers,
                     num_attention_heads=12, intermediate_size=1536)  # fmt: skip
    enc, head = BertEncoder(cfg).train(), torch.nn.Linear(384, 9)
    for name, prm in enc.named_parameters():
        if name.startswith("embeddings") or any(name.startswith(f"layers.{i}.") for i in range(3)):
            prm.requires_grad_(False)
    params = [q for q in [*enc.parameters(), *head.parameters()] if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    B, T = 16, 40
    ids = torch.randint(5, 30000, (B, T))
    am = torch.ones(B, T, dtype=torch.long)
    am[B // 2 :, 30:] = 0
    tgt = torch.randint(0, 9, (B * T,))

    def run(name: str, n: int) -> float:
        BertSelfAttention.forward = VARIANTS[name]
        times = []
        for _ in range(n):
            t = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = head(enc(ids, am)).float().view(-1, 9)
            F.cross_entropy(logits, tgt).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.process_time() - t)
        return statistics.median(times) * 1e3

    try:
        for name in names:
            run(name, 2)  # warm-up
        ms = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names:
                ms[name].append(run(name, args.steps))
            print(f"round {r + 1}: " + ", ".join(f"{n} {ms[n][-1]:.1f} ms" for n in names))
    finally:
        BertSelfAttention.forward = SDPA
    base = names[0]
    out = {}
    for name in names:
        ratios = [b / v for b, v in zip(ms[base], ms[name], strict=True)]
        out[name] = {"ms": statistics.median(ms[name]), "ratio": statistics.median(ratios)}
        print(f"{name:10s} median {out[name]['ms']:.1f} ms/step, {base} / {name} "
              f"{out[name]['ratio']:.3f} (median of the rounds' ratios)")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
