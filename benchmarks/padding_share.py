"""How much of a CPU step's rows are padding, and what packing would save (issue 55's packing
lever): for CoNLL files encoded as the studies encode them (the model's tokenizer, inputs cut to
``--max-len``), the real tokens over the padded tokens of the engine's length-bucketed batches
(``length_batches``: sorted by length within pools of 50 batches), at pad multiples 8 and 32,
and over the rows those same batches would take packed (first-fit decreasing of the batch's
sentences into rows as wide as its padded longest one: the batch's sentences kept together, as
packing without changing the batches would do).

    python -m benchmarks.padding_share --model <e5-small> --data ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from xlt_engine.data.batching import length_batches, length_limit, padded_length
from xlt_engine.data.task import encode, read_task_file, subsample
from xlt_engine.data.tokenizer import load_tokenizer


def packed_rows(lengths: np.ndarray, width: int) -> int:
    """Rows of ``width`` that first-fit decreasing packs ``lengths`` into."""
    bins: list[int] = []
    for n in sorted(lengths.tolist(), reverse=True):
        for i, used in enumerate(bins):
            if used + n <= width:
                bins[i] += n
                break
        else:
            bins.append(n)
    return len(bins)


def shares(lengths: np.ndarray, batch: int, pad: int, seed: int) -> dict:
    limit = length_limit(lengths)
    padded = packed = 0
    for items in length_batches(lengths, batch, None, pad, seed=seed, epoch=0):
        width = padded_length(int(lengths[items].max()), pad, limit)
        padded += len(items) * width
        packed += packed_rows(lengths[items], width) * width
    real = int(lengths.sum())
    return {"pad": pad, "real_over_padded": real / padded, "real_over_packed": real / packed}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument(
        "--files", default="conll2003_en/eng.train,conll2002/esp.train,conll2002/ned.train"
    )
    p.add_argument("--sentences", type=int, default=2400, help="drawn by --seed from each file")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    tok = load_tokenizer(args.model)
    out = []
    for name in args.files.split(","):
        data = subsample(read_task_file(args.data / name, "conll"), args.sentences, args.seed)
        lengths = encode(data, tok, data.label_set(), args.max_len).lengths
        for pad in (8, 32):
            r = {"file": name, "items": len(lengths), "mean_length": float(lengths.mean())}
            r |= shares(lengths, args.batch, pad, args.seed)
            out.append(r)
            print(f"{name:24s} {r['items']:5d} items, mean {r['mean_length']:.1f} tokens, pad "
                  f"{pad:2d}: real / padded {r['real_over_padded']:.3f}, real / packed "
                  f"{r['real_over_packed']:.3f}")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
