"""A small data folder for the data-dependent benchmarks (``bench_btf_step.py``,
``bench_round.py``) on a machine without ``../shared/data``, such as a bare GPU machine.

It holds what those benchmarks read: ``mbert/vocab.txt``, ``conll2003_en/eng.train`` and
``conll2002/esp.train``. With ``--from DATA`` it takes the real mBERT vocabulary and the first
``--sentences`` sentences of each CoNLL file; without it, it generates a WordPiece vocabulary of
mBERT's size (119,547 entries, the same special tokens) and random sentences over it, so the
shapes (and so the timings) are mBERT's. Write it outside the repository, or into an ignored
folder such as ``.gpu_sample/`` to carry it to the GPU machine; never commit it.

    python3 -m benchmarks.make_sample --out /tmp/sample                   # generated
    python3 -m benchmarks.make_sample --out .gpu_sample --from ../shared/data
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from xlt_engine.data import read_conll
from xlt_engine.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

MBERT_VOCAB = 119547
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TAGS = ["O"] * 6 + ["B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
FILES = ("conll2003_en/eng.train", "conll2002/esp.train")


def conll_text(sentences) -> str:
    """``word tag`` lines, a blank line between sentences."""
    return "\n".join("".join(f"{w} {t}\n" for w, t in s) for s in sentences) + "\n"


def from_data(data: Path, out: Path, n: int) -> None:
    vocab = (data / "mbert" / "vocab.txt").read_bytes()
    (out / "mbert").mkdir(parents=True, exist_ok=True)
    (out / "mbert" / "vocab.txt").write_bytes(vocab)
    for name in FILES:
        sents = read_conll(data / name)[:n]
        text = conll_text(zip(s.tokens, s.tags, strict=True) for s in sents)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / name, text)


def generated(out: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    words = [f"w{i:06d}" for i in range(MBERT_VOCAB - len(SPECIALS) - 100)]
    pieces = [f"##{i:02d}" for i in range(100)]
    (out / "mbert").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "mbert" / "vocab.txt", "\n".join(SPECIALS + words + pieces) + "\n")
    for name in FILES:
        sents = (
            [(rng.choice(words), rng.choice(TAGS)) for _ in range(rng.randint(4, 40))]
            for _ in range(n)
        )
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / name, conll_text(sents))


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument("--from", dest="data", type=Path, help="a shared data folder to sample")
    p.add_argument("--sentences", type=int, default=2000, help="per CoNLL file")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.sentences < 1:
        p.error(f"--sentences must be at least 1, got {a.sentences}")
    if a.data is not None:
        from_data(a.data, a.out, a.sentences)
    else:
        generated(a.out, a.sentences, a.seed)
    print(f"wrote {a.out} ({'sampled from ' + str(a.data) if a.data else 'generated'})")
    return a.out


if __name__ == "__main__":
    main()
