"""Where the forward-only pass spends its time on a CPU (issue 65): ``predict_logits`` (the pass of
the teacher, the checks, the threshold step, evaluate and predict) on e5-small with a fresh
3-voter head, over 800 eng.train sentences, one thread, under ``torch.profiler``.

    OMP_NUM_THREADS=1 python -m benchmarks.profile_inference --model models/e5-small \\
        --data ../shared/data
"""

import argparse
import time

import torch

from xlt_engine.data.task import encode, read_task_file
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.train.inference import predict_logits
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.task import new_task_model

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/e5-small")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--sentences", type=int, default=800)
    args = p.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer(args.model)
    path = f"{args.data}/conll2003_en/eng.train"
    data = read_task_file(path, "conll", False, args.sentences, 1, None)
    enc = encode(data, tok, LABELS, 64)
    model = new_task_model(load_encoder(args.model), "token", LABELS, 3, None, 0.1, "cls")
    n = int(enc.lengths.sum())
    print(f"{len(enc.lengths)} items, {n} tokens")
    cpu = torch.device("cpu")
    predict_logits(model, enc, tok.pad_id, cpu)  # warm-up
    t = time.perf_counter()
    predict_logits(model, enc, tok.pad_id, cpu)
    print(f"forward {n / (time.perf_counter() - t):.0f} tokens/s")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predict_logits(model, enc, tok.pad_id, cpu)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
