"""Time a BERT MLM training step (forward + backward) here against transformers'
``BertForMaskedLM`` with SDPA attention, on the same random weights and batch.

Three rows: ``xlt-engine`` (MLM head on the masked 15% of positions only, as training runs it),
``xlt-engine full-logits`` (head on every position, the like-for-like check of the encoder) and
``transformers sdpa`` (logits for every position, loss over the masked ones). Reports ms per step,
tokens/s and peak memory; appends a JSON record with the GPU, versions and command under
``benchmarks/results/``. transformers is a test/benchmark-only dependency.

    python -m benchmarks.bench_encoder                 # mBERT-base shapes, CUDA, bf16
    python -m benchmarks.bench_encoder --device cpu --layers 2 --hidden 64 --heads 2 \
        --intermediate 128 --vocab 1000 --batch 4 --seq 32 --iters 2 --no-save   # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.record import append, environment
from xlt_engine.model import BertConfig, BertForMLM, save_pretrained


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--precision",
        choices=["autocast-bf16", "bf16", "fp32"],
        default="autocast-bf16",
        help="autocast-bf16: fp32 weights under bf16 autocast (training); bf16: bf16 weights",
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=119547)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-save", action="store_true", help="print only; write no result file")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, warmup: int, iters: int) -> tuple[float, float]:
    """Median ms per step and peak memory (MiB, CUDA only) over ``iters`` timed steps."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    )
    return sorted(times)[len(times) // 2], peak


def main(argv=None) -> list[dict]:
    import transformers

    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.seq),
    )
    ours = BertForMLM(config)
    with tempfile.TemporaryDirectory() as tmp:  # the same weights in both models
        save_pretrained(ours, tmp)
        ref = transformers.BertForMaskedLM.from_pretrained(tmp, attn_implementation="sdpa")
    weight_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ours, ref = ours.to(device, weight_dtype).train(), ref.to(device, weight_dtype).train()
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=args.precision == "autocast-bf16"
    )

    B, T = args.batch, args.seq
    ids = torch.randint(
        min(1000, args.vocab // 2), args.vocab, (B, T), device=device
    )  # past [unused]
    mask = torch.ones(B, T, dtype=torch.long, device=device)
    mask[B // 2 :, T * 3 // 4 :] = 0  # half the batch padded by a quarter
    masked = (torch.rand(B, T, device=device) < args.mask_rate) & mask.bool()
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    flat = masked.flatten().nonzero().squeeze(1)  # once, outside the timed step
    targets = ids.flatten()[flat]
    everywhere = torch.arange(B * T, device=device)

    def step_ours():
        with autocast:
            loss = F.cross_entropy(ours(ids, flat, attention_mask=mask).float(), targets)
        loss.backward()
        ours.zero_grad(set_to_none=True)

    def step_ours_full():
        with autocast:
            logits = ours(ids, everywhere, attention_mask=mask).float()
            loss = F.cross_entropy(logits, labels.flatten(), ignore_index=-100)
        loss.backward()
        ours.zero_grad(set_to_none=True)

    def step_ref():
        with autocast:
            loss = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        ref.zero_grad(set_to_none=True)

    rows = []
    for name, step in [
        ("xlt-engine", step_ours),
        ("xlt-engine full-logits", step_ours_full),
        ("transformers sdpa", step_ref),
    ]:
        ms, peak = time_steps(step, device, args.warmup, args.iters)
        rows.append(
            {
                "impl": name,
                "ms_per_step": round(ms, 3),
                "tokens_per_s": round(B * T / ms * 1e3),
                "peak_mib": round(peak, 1),
            }
        )

    env = environment(device, "bench_encoder.py", argv)
    gpu = env["device"]
    record = {
        "what": "BERT MLM forward+backward",
        **env,
        "args": vars(args),
        "masked_positions": int(flat.numel()),
        "rows": rows,
    }
    if not args.no_save:
        append("encoder", device, record)
    print(f"{gpu}  B={B} T={T} L={args.layers} H={args.hidden} V={args.vocab} {args.precision}")
    print(f"{'impl':<24}{'ms/step':>10}{'tokens/s':>12}{'peak MiB':>10}")
    for r in rows:
        print(
            f"{r['impl']:<24}{r['ms_per_step']:>10.2f}{r['tokens_per_s']:>12,}{r['peak_mib']:>10.0f}"
        )
    return rows


if __name__ == "__main__":
    main()
