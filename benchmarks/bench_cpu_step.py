"""The CPU training step of the real-weight studies, side by side (issue 55): the engine's
fine-tune (hard) and soft steps through ``loop.train`` on e5-small shapes, against transformers'
token classifier (SDPA attention) trained on the same batches, and against this machine's own
GEMM rate at the model's matrix shapes (a roofline fraction).

Settings of the studies: batch 16, inputs cut to 64 tokens, 3 voters, the embeddings and bottom 3
layers frozen, AdamW, clipping at 1.0; real CoNLL English sentences through the model's own
tokenizer. The hard step is the fine-tune step on other labels (the same computation), so it is
timed once, as ``finetune``. Variants: ``precision`` fp32 (today's CPU default) or bf16
(autocast), ``pad_multiple`` 32 (today's default) or 8.

tokens/s counts the real (not padded) tokens of the batches; model GFLOP/s counts the matrix
products a step does on the padded batch (forward through every layer, backward through the
trained ones), against the GEMM rate measured at the model's shapes (fp32 and bf16): the
fraction is how close the step comes to the machine. Padding is work the machine does and the
tokens/s does not count, so pad_multiple shows in tokens/s, not in the fraction.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_cpu_step --model models/e5-small \\
        --data ../shared/data --threads 1 --iters 20
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.record import append, environment
from xlt_engine.data.task import TaskBatches, encode, read_task_file
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.selftrain.store import SoftBatches
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.inference import forward_batch
from xlt_engine.engine.train.loop import RunIO, train
from xlt_engine.engine.train.optim import prepare
from xlt_engine.kernels import soft_label_kl
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import new_task_model

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a converted e5-small (or any BERT)")
    p.add_argument("--data", type=Path, required=True, help="the shared data folder")
    p.add_argument("--threads", default="1", help="intra-op threads, by commas (e.g. 1,2)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--freeze", type=int, default=3)
    p.add_argument("--sentences", type=int, default=800, help="eng.train sentences read")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument(
        "--variants",
        default="fp32/32,fp32/8,bf16/32,bf16/8",
        help="precision/pad_multiple pairs, by commas (precision: fp32, bf16, bf16-pure; "
        "transformers runs the fp32 and bf16 ones); a third part 'compile' runs the step "
        "under train.compile = 'compile' (inductor; its warm-up steps include the compile)",
    )
    p.add_argument("--no-hf", action="store_true", help="leave transformers out")
    p.add_argument(
        "--hf-attn",
        default="sdpa",
        help="transformers' attention implementations, by commas (sdpa, eager): on CPU with "
        "dropout, sdpa takes its fp32 math path and eager computes in bf16 under autocast",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="print torch.profiler's N costliest ops (self CPU time) of each run; timings of a "
        "profiled run carry the profiler's overhead",
    )
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    unknown = sorted(set(args.hf_attn.split(",")) - {"sdpa", "eager"})
    if unknown:
        p.error(f"--hf-attn: unknown {unknown}; known: eager, sdpa")
    return args


def step_flops(cfg, batch: dict, trained_layers: int) -> float:
    """The encoder's matrix products in one step on ``batch`` (the padded batch, as the step
    runs it): forward through every layer, backward (2x) through the trained ones; the voters'
    heads (under 1% at e5-small's size) are left out."""
    H, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    B, T = batch["input_ids"].shape
    tokens = B * T  # the step runs on the padded batch
    layer = 2 * tokens * (4 * H * H + 2 * H * F) + 4 * B * T * T * H
    return layer * L + 2 * layer * trained_layers


def gemm_rate(tokens: int, H: int, F: int, dtype: torch.dtype, reps: int = 10) -> float:
    """GFLOP/s of ``torch.mm`` at the model's shapes ([tokens, H] x [H, H], [H, F], [F, H])."""
    shapes = [(tokens, H, H), (tokens, H, F), (tokens, F, H)]
    total_flops, total_s = 0.0, 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        total_s += time.perf_counter() - t0
        total_flops += 2 * m * k * n * reps
    return total_flops / total_s / 1e9


def profiled(args, title: str):
    """A context that, with ``--profile N``, prints the N ops of most self CPU time under
    ``title``; else does nothing."""
    if not args.profile:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def run():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            yield
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile)
        print(f"--- profile: {title}\n{table}")

    return run()


class Fixed:
    """The first ``n`` batches of a data source, over and over: every variant and the
    transformers baseline train on the same batches."""

    def __init__(self, source, n: int):
        self.batches = [source.batch(0, i % source.num_batches(0)) for i in range(n)]

    def num_batches(self, epoch: int) -> int:
        return len(self.batches)

    def batch(self, epoch: int, index: int) -> dict:
        return self.batches[index]


def ours(args, enc, pad_id, probs, step: str, precision: str, pad: int, frozen, compile_="off"):
    """Seconds per step and real tokens per step of the engine's ``step`` through loop.train."""
    torch.manual_seed(0)
    encoder = load_encoder(args.model, dtype=torch.float32)
    model = new_task_model(encoder, "token", LABELS, 3)
    if step == "soft":
        source = SoftBatches(enc, probs, pad_id, args.batch, None, 0, pad)
    else:
        source = TaskBatches(enc, pad_id, args.batch, None, 0, pad)
    n = args.warmup + args.iters
    data = Fixed(source, n)

    def loss_fn(m, batch, gen):
        logits = forward_batch(m, batch, torch.device("cpu"))
        if step == "soft":
            return soft_label_kl(logits, batch["probs"])
        return VotersModule.loss(logits, batch["targets"])

    cfg = TrainConfig(max_steps=n, lr=1e-4, log_every=args.warmup, save_minutes=0,
                      final_checkpoint=False, warmup_ratio=0.0, precision=precision,
                      compile=compile_)  # fmt: skip
    model = prepare(model, cfg, torch.device("cpu"), frozen)
    with tempfile.TemporaryDirectory() as tmp, profiled(args, f"xlt-engine {step} {precision}"):
        history = train(model, loss_fn, data, cfg, tmp, RunIO(lambda m, f: None, echo=None))
    first, last = history.history[0], history.history[-1]
    steps = last["step"] - first["step"]
    secs = (last["time"] - first["time"]) / steps
    timed = data.batches[first["step"] : last["step"]]
    tokens = sum(int(b["attention_mask"].sum()) for b in timed) / len(timed)
    flops = sum(step_flops(encoder.config, b, encoder.config.num_hidden_layers - args.freeze)
                for b in timed) / len(timed)  # fmt: skip
    return {"seconds_per_step": secs, "tokens_per_step": tokens, "flops_per_step": flops}


def transformers_step(args, enc, pad_id, precision: str, pad: int, attn: str = "sdpa") -> dict:
    """transformers' token classifier (attention ``attn``) on the fine-tune step's batches, same
    freezing, AdamW and clipping; its one linear head reads every first sub-token as ours do."""
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(LABELS), attn_implementation=attn
    ).train()
    prefix = model.base_model_prefix
    for name, p in model.named_parameters():
        frozen = name.startswith(f"{prefix}.embeddings.") or any(
            name.startswith(f"{prefix}.encoder.layer.{i}.") for i in range(args.freeze)
        )
        p.requires_grad_(not frozen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = args.warmup + args.iters
    batches = Fixed(TaskBatches(enc, pad_id, args.batch, None, 0, pad), n).batches
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(b):
        B, T = b["input_ids"].shape
        labels = torch.full((B * T,), -100, dtype=torch.long)
        labels[b["positions"]] = b["targets"]
        with torch.autocast(**amp):
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        labels=labels.view(B, T))  # fmt: skip
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[: args.warmup]:
        step(b)
    with profiled(args, f"transformers ({attn}) finetune {precision}"):
        t0 = time.perf_counter()
        for b in batches[args.warmup :]:
            step(b)
        secs = (time.perf_counter() - t0) / args.iters
    timed = batches[args.warmup :]
    tokens = sum(int(b["attention_mask"].sum()) for b in timed) / len(timed)
    return {"seconds_per_step": secs, "tokens_per_step": tokens}


def step_inputs(args):
    """What a step reads (``args``: model, data, sentences, max_len, freeze): the tokenizer,
    the first eng.train sentences encoded, soft labels for their rows (random, fixed) and the
    frozen parameters' patterns."""
    tok = load_tokenizer(args.model)
    data = read_task_file(
        args.data / "conll2003_en" / "eng.train", "conll", False, args.sentences, 1, None
    )
    enc = encode(data, tok, LABELS, args.max_len)
    rows = int(enc.row_offsets[-1])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(LABELS)), size=rows).astype(np.float16)
    frozen = (r"encoder\.embeddings\.", *(rf"encoder\.layers\.{i}\." for i in range(args.freeze)))
    return tok, enc, probs, frozen


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    tok, enc, probs, frozen = step_inputs(args)
    cfg = load_encoder(args.model, dtype=torch.float32).config
    records = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        tokens = args.batch * 40  # about the tokens of a batch: the GEMM's row count
        gemm = {
            str(dt).removeprefix("torch."): gemm_rate(tokens, cfg.hidden_size,
                                                      cfg.intermediate_size, dt)
            for dt in (torch.float32, torch.bfloat16)
        }  # fmt: skip
        print(f"threads {threads}: GEMM at the model's shapes {gemm['float32']:.1f} GFLOP/s "
              f"fp32, {gemm['bfloat16']:.1f} bf16")  # fmt: skip
        rows_out = []
        for variant in args.variants.split(","):
            precision, pad, *rest = variant.split("/")
            comp = rest[0] if rest else "off"
            for step in ("finetune", "soft"):
                r = ours(args, enc, tok.pad_id, probs, step, precision, int(pad), frozen, comp)
                peak = gemm["bfloat16" if precision.startswith("bf16") else "float32"]
                who = "xlt-engine" if comp == "off" else f"xlt-engine {comp}"
                r |= {"who": who, "step": step, "precision": precision,
                      "pad_multiple": int(pad), "threads": threads}  # fmt: skip
                r["tokens_per_s"] = r["tokens_per_step"] / r["seconds_per_step"]
                r["model_gflops"] = r["flops_per_step"] / r["seconds_per_step"] / 1e9
                r["roofline_fraction"] = r["model_gflops"] / peak
                rows_out.append(r)
            same = comp == "off" and precision in ("bf16", "fp32")  # a variant transformers has
            for attn in args.hf_attn.split(",") if same and not args.no_hf else []:
                r = transformers_step(args, enc, tok.pad_id, precision, int(pad), attn)
                r |= {"who": f"transformers ({attn})", "step": "finetune", "precision": precision,
                      "pad_multiple": int(pad), "threads": threads}  # fmt: skip
                r["tokens_per_s"] = r["tokens_per_step"] / r["seconds_per_step"]
                rows_out.append(r)
        for r in rows_out:
            extra = (
                f", {r['model_gflops']:.1f} GFLOP/s = {100 * r['roofline_fraction']:.0f}% of GEMM"
                if "model_gflops" in r
                else ""
            )
            print(f"  {r['who']:20s} {r['step']:8s} {r['precision']:4s} pad {r['pad_multiple']:2d}: "
                  f"{r['tokens_per_s']:7.1f} tokens/s ({1e3 * r['seconds_per_step']:.0f} ms/step)"
                  + extra)  # fmt: skip
        records.append({"threads": threads, "gemm_gflops": gemm, "rows": rows_out})
    record = {
        **environment(torch.device("cpu"), "bench_cpu_step.py", argv),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": records,
    }
    if not args.no_save:
        append("cpu_step", torch.device("cpu"), record)
    return records


if __name__ == "__main__":
    main()
