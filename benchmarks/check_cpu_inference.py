"""A task model's inference on CPU in fp32 and in bf16 autocast, side by side: entity F1 on dev
sentences, tokens/s, and how far the two disagree (issue 55: inference in bf16 "where
allowed", checked on a real fine-tuned model before ``inference_dtype`` chose it).

    OMP_NUM_THREADS=1 python -m benchmarks.check_cpu_inference --model RUN/finetune-direct/model \\
        --data ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from xlt_engine.data.task import encode, read_task_file
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.train.inference import predict_logits, predicted_labels, score
from xlt_engine.model.task import load_task_model

FILES = ("conll2003_en/eng.testa", "conll2002/esp.testa")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a fine-tuned task model folder")
    p.add_argument("--data", type=Path, required=True, help="the shared data folder")
    p.add_argument("--sentences", type=int, default=600)
    p.add_argument("--max-len", type=int, default=64)
    args = p.parse_args(argv)
    model, tok = load_task_model(args.model), load_tokenizer(args.model)
    rows = []
    for rel in FILES:
        data = read_task_file(args.data / rel, "conll", False, args.sentences, 1, None)
        enc = encode(data, tok, model.labels, args.max_len)
        tokens = int(enc.lengths.sum())
        probs = {}
        for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            t0 = time.perf_counter()
            logits = predict_logits(model, enc, tok.pad_id, torch.device("cpu"), 8192, amp)
            secs = time.perf_counter() - t0
            probs[name] = logits.float().softmax(-1).mean(0)
            f1 = score(data, predicted_labels(enc, logits, model.labels))["score"]
            rows.append({"file": rel, "precision": name, "f1": f1, "tokens_per_s": tokens / secs})
            print(f"{rel} {name}: F1 {100 * f1:.2f}, {tokens / secs:,.0f} tokens/s")
        diff = (probs["fp32"] - probs["bf16"]).abs().max().item()
        same = (probs["fp32"].argmax(-1) == probs["bf16"].argmax(-1)).float().mean().item()
        print(f"  max |p32 - p16| {diff:.4f}; the same argmax on {100 * same:.2f}% of the words")
    return rows


if __name__ == "__main__":
    main()
