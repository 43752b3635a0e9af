"""BTF training-step throughput: xlt-engine's btf step against transformers' ``BertForMaskedLM``.

Both run a whole optimizer step on the same batch of real text (CoNLL English and Spanish
sentences tokenised with the mBERT vocabulary, packed into ``--batch`` x ``--seq`` windows, 15%
masked by ``MlmMasker``), with random weights, the embeddings and bottom ``--freeze`` layers
frozen as btf does, and AdamW (fused on CUDA):

- ``xlt-engine``: ``MlmObjective`` (the btf stage's): only the masked rows reach the MLM head,
  through ``fused_mlm_loss`` (Triton on CUDA, torch reference on CPU);
- ``transformers sdpa``: ``BertForMaskedLM(attn_implementation="sdpa")`` with its own loss
  (logits at every position, cross-entropy over the masked ones);
- ``transformers sdpa, V padded``: the same with its vocabulary padded to a multiple of 64
  (``resize_token_embeddings(..., pad_to_multiple_of=64)``), the fair baseline on a GPU (an odd
  V sends cuBLAS to slow fallback kernels; the extra rows only add softmax columns);
- ``xlt-engine loop``: the btf stage's step through the real ``loop.train`` (host-side masking
  read one step ahead, the copy to the device, clipping, the schedule), timed between its own
  records (one every ``warmup`` steps, a host sync each); with ``--variants``
  also ``loop bf16-pure`` (``precision = "bf16-pure"``), ``loop compile`` and ``loop graphs``
  (``train.compile``; the compile time falls in the warm-up steps).

bf16 autocast on CUDA (fp32 master weights), fp32 on CPU. MFU (CUDA only) counts the same model
FLOPs for both (forward 2N + attention, decoder only at masked rows; backward twice the forward,
the frozen part's weight gradients included for simplicity) against ``--peak-tflops``.

    python -m benchmarks.bench_btf_step --data ../shared/data            # CUDA, mBERT-base
    python -m benchmarks.bench_btf_step --data ../shared/data --device cpu --tiny
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_encoder import sync, time_steps
from benchmarks.record import append, environment
from xlt_engine.data import load_tokenizer, read_conll
from xlt_engine.data.masking import MlmMasker
from xlt_engine.engine.method.btf import MlmObjective, pad_rows
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.loop import RunIO, batch_generator, train
from xlt_engine.engine.train.optim import freeze, prepare
from xlt_engine.model import BertConfig, BertForMLM, save_pretrained


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the shared data folder")
    p.add_argument(
        "--variants",
        default=None,
        help="loop variants besides the default, comma-separated: bf16-pure, compile, graphs "
        "(default: all on CUDA, none on CPU)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (CPU comparison)")
    p.add_argument("--batch", type=int, default=None, help="default 32 (8 with --tiny)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--freeze", type=int, default=3, help="bottom layers frozen (with embeddings)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=989.4, help="H100/H200 dense bf16")
    p.add_argument("--no-save", action="store_true")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="after timing, profile 3 steps of each and print the ROWS kernels with the most GPU time",
    )
    return p.parse_args(argv)


def profile(name: str, step, device: torch.device, rows: int) -> None:
    """torch.profiler over 3 steps: GPU time against host time per step, and the top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    sync(device)
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync(device)
    events = prof.key_averages()
    # the kernel rows only: an op row's device time is its kernels' again (summing both, and
    # the optimizer's annotation, counted the GPU time twice)
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    gpu_us = sum(e.self_device_time_total for e in kernels) / 3
    print(f"profile {name}: GPU kernels {gpu_us / 1e3:.2f} ms per step ({len(kernels)} kernels)")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def fresh(cfg: BertConfig, device: torch.device) -> BertForMLM:
    """The benchmark's random weights (seed 0), the same every call."""
    torch.manual_seed(0)
    return BertForMLM(cfg).to(device).train()


def real_batch(data: Path, tok, B: int, T: int) -> torch.Tensor:
    """[B, T] windows of real sentences: [CLS] pieces [SEP], packed back to back."""
    sents = []
    for f in ("conll2003_en/eng.train", "conll2002/esp.train"):
        sents += [" ".join(s.tokens) for s in read_conll(data / f)][:2000]
    ids = np.concatenate(
        [
            np.asarray(e.ids, np.int64)
            for e in tok.backend.encode_batch(sents, add_special_tokens=False)
        ]
    )
    room = T - 2
    if len(ids) < B * room:
        raise SystemExit(f"not enough text for {B} x {T}")
    body = ids[: B * room].reshape(B, room)
    out = np.empty((B, T), np.int64)
    out[:, 0], out[:, 1:-1], out[:, -1] = tok.cls_id, body, tok.sep_id
    return torch.from_numpy(out)


LOOP_VARIANTS = {  # TrainConfig settings of the loop rows
    "bf16-pure": {"precision": "bf16-pure"},
    "compile": {"compile": "compile"},
    "graphs": {"compile": "graphs"},
}


class RepeatedBatch:
    """A ``DataSource`` of one real batch, masked afresh for each step on the host from the
    loop's generator of the batch, its rows padded (as ``btf.MlmData``)."""

    def __init__(self, ids: torch.Tensor, masker: MlmMasker, seed: int):
        self.ids, self.masker, self.seed = ids, masker, seed

    def num_batches(self, epoch: int) -> int:
        return 1000

    def batch(self, epoch: int, index: int) -> dict:
        attn = torch.ones_like(self.ids)
        m = self.masker(self.ids, attn, batch_generator(self.seed, epoch, index))
        positions, labels = pad_rows(m.positions, m.labels)
        return {"input_ids": m.input_ids, "attention_mask": attn, "positions": positions,
                "labels": labels}  # fmt: skip


def loop_ms_per_step(
    model: BertForMLM, data, frozen, device, warmup: int, iters: int, **settings
) -> float:
    """Milliseconds per step of ``loop.train`` on the btf objective, from the run's own records:
    one every ``warmup`` steps (each a host sync), ``iters`` rounded up to a multiple of it; the
    time between the first record (after the warm-up, compiling included) and the last, over
    the steps between them. ``settings``: TrainConfig's (precision, compile)."""

    def loss_fn(objective, batch, gen):
        return objective(
            *(batch[k] for k in ("input_ids", "positions", "attention_mask", "labels"))
        )

    warmup = max(1, warmup)
    iters = -(-iters // warmup) * warmup
    cfg = TrainConfig(max_steps=warmup + iters, lr=2e-5, log_every=warmup, save_minutes=0,
                      final_checkpoint=False, warmup_ratio=0.0, **settings)  # fmt: skip
    objective = prepare(MlmObjective(model), cfg, device, frozen)
    with tempfile.TemporaryDirectory() as tmp:
        history = train(objective, loss_fn, data, cfg, tmp, RunIO(lambda m, f: None, echo=None))
    first, last = history.history[0], history.history[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"]) * 1e3


def model_flops(cfg: BertConfig, B: int, T: int, masked: int) -> float:
    H, L, F, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    layer = 2 * B * T * (4 * H * H + 2 * H * F) + 4 * B * T * T * H  # matmuls + attention
    head = 2 * masked * (H * H + H * V)
    return 3 * (L * layer + head)  # forward + backward (2x)


def main(argv=None) -> list[dict]:
    import transformers

    args = parse_args(argv)
    device = torch.device(args.device)
    B = args.batch or (8 if args.tiny else 32)
    T = args.seq
    tok = load_tokenizer(args.data / "mbert" / "vocab.txt")
    shape = (
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        if args.tiny
        else {}
    )
    cfg = BertConfig(vocab_size=tok.vocab_size, **shape)
    ours = fresh(cfg, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:  # the same random weights in both
        save_pretrained(ours, tmp)
        ref = transformers.BertForMaskedLM.from_pretrained(tmp, attn_implementation="sdpa")
        ref_pad = transformers.BertForMaskedLM.from_pretrained(tmp, attn_implementation="sdpa")
        ref_pad.resize_token_embeddings(cfg.vocab_size, pad_to_multiple_of=64)
    ours, ref, ref_pad = ours.to(device).train(), ref.to(device).train(), ref_pad.to(device).train()
    k = min(args.freeze, cfg.num_hidden_layers)
    frozen = (r"encoder\.embeddings\.", *(rf"encoder\.layers\.{i}\." for i in range(k)))
    freeze(ours, frozen)
    for hf in (ref, ref_pad):
        for name, p in hf.named_parameters():
            if name.startswith("bert.embeddings.") or any(
                name.startswith(f"bert.encoder.layer.{i}.") for i in range(k)
            ):
                p.requires_grad_(False)
    fused = device.type == "cuda"

    def adamw(model):
        return torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=2e-5, fused=fused
        )

    opt_ours, opt_ref, opt_pad = adamw(ours), adamw(ref), adamw(ref_pad)
    objective = MlmObjective(ours)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    ids = real_batch(args.data, tok, B, T)
    attn = torch.ones_like(ids)
    masked = MlmMasker.from_tokenizer(tok)(ids, attn, torch.Generator().manual_seed(0))
    m_ids, m_pos = masked.input_ids.to(device), masked.positions.to(device)
    m_labels, attn_d = masked.labels.to(device), attn.to(device)
    hf_labels = torch.full((B * T,), -100, dtype=torch.long)
    hf_labels[masked.positions] = masked.labels
    hf_labels = hf_labels.view(B, T).to(device)
    n_masked = int((masked.labels != -100).sum())

    def step_ours():
        with torch.autocast(**amp):
            loss = objective(m_ids, m_pos, attn_d, m_labels)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def hf_step(model, opt):
        def step():
            with torch.autocast(**amp):
                loss = model(input_ids=m_ids, attention_mask=attn_d, labels=hf_labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    step_ref, step_pad = hf_step(ref, opt_ref), hf_step(ref_pad, opt_pad)
    flops = model_flops(cfg, B, T, n_masked)
    rows = []
    steps = (("xlt-engine", step_ours), ("transformers sdpa", step_ref),
             ("transformers sdpa, V padded", step_pad), ("xlt-engine loop", None))  # fmt: skip
    variants = args.variants if args.variants is not None else (
        "bf16-pure,compile,graphs" if device.type == "cuda" else "")  # fmt: skip
    for v in filter(None, variants.split(",")):
        if v not in LOOP_VARIANTS:
            raise SystemExit(f"--variants: {v!r} is not one of {', '.join(LOOP_VARIANTS)}")
        steps += ((f"xlt-engine loop {v}", None),)
    for name, step in steps:
        if step is None:  # the loop, on a fresh copy of the same weights
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            data = RepeatedBatch(ids, MlmMasker.from_tokenizer(tok), seed=0)
            settings = LOOP_VARIANTS.get(name.removeprefix("xlt-engine loop").strip(), {})
            ms = loop_ms_per_step(fresh(cfg, device), data, frozen, device, args.warmup,
                                  args.iters, **settings)  # fmt: skip
            cuda = device.type == "cuda"
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
        else:
            ms, peak = time_steps(step, device, args.warmup, args.iters)
        row = {
            "impl": name,
            "ms_per_step": round(ms, 3),
            "steps_per_s": round(1e3 / ms, 3),
            "tokens_per_s": round(B * T / ms * 1e3),
            "peak_mib": round(peak, 1),
        }
        if device.type == "cuda":
            row["mfu"] = round(flops / (ms / 1e3) / (args.peak_tflops * 1e12), 4)
        rows.append(row)
    sync(device)
    by = {r["impl"]: r["tokens_per_s"] for r in rows}
    speedup = by["xlt-engine"] / by["transformers sdpa"]
    fair = by["xlt-engine loop"] / by["transformers sdpa, V padded"]
    env = environment(device, "bench_btf_step.py", argv)
    gpu = env["device"]
    record = {
        "what": "BTF optimizer step (masked MLM, frozen embeddings + bottom layers, AdamW)",
        **env,
        "shape": {
            "batch": B,
            "seq": T,
            "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size,
            "frozen_layers": k,
            "masked": n_masked,
        },
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "rows": rows,
        "speedup_tokens_per_s": round(speedup, 3),
        # the goal: the real loop step against the padded-vocabulary baseline
        "loop_vs_padded_hf": round(fair, 3),
    }
    if not args.no_save:
        append("btf_step", device, record)
    print(
        f"{gpu}  B={B} T={T} L={cfg.num_hidden_layers} H={cfg.hidden_size} V={cfg.vocab_size} "
        f"masked={n_masked} {record['precision']}"
    )
    print(f"{'impl':<29}{'ms/step':>10}{'steps/s':>9}{'tokens/s':>11}{'peak MiB':>10}{'MFU':>7}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        print(
            f"{r['impl']:<29}{r['ms_per_step']:>10.2f}{r['steps_per_s']:>9.2f}"
            f"{r['tokens_per_s']:>11,}{r['peak_mib']:>10.0f}{mfu:>7}"
        )
    print(
        f"speed-up (tokens/s): {speedup:.2f}x; the loop against padded-V transformers {fair:.2f}x"
    )
    if args.profile:
        profile("xlt-engine", step_ours, device, args.profile)
        profile("transformers sdpa", step_ref, device, args.profile)
    return rows


if __name__ == "__main__":
    main()
