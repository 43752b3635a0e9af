"""Why the Voters Module fine-tunes worse than one linear head (issue 17): run ``xlt-engine run
--stage finetune`` with the arguments given, optionally with only the first voter's gradient
reaching the encoder, then score each voter of the fine-tuned model alone on a labeled file.

    # one finetune (any CLI arguments after --), then per-voter scores of its model
    python -m lab.voter_heads --first-voter-trains-encoder -- \\
        run --stage finetune --config configs/e5-small-conll.toml --out OUT ...
    python -m lab.voter_heads --score OUT/eng-esp/finetune-direct/model \\
        --file ../shared/data/conll2003_en/eng.testa

``--first-voter-trains-encoder`` is a diagnostic, not a method: during training every voter but
the first reads the encoder's features detached, so the encoder learns from voter 0 alone and
the other voters fit on top of it (``lab/results/voter_heads_finetune_cpu_20261123.md``).
"""

from __future__ import annotations

import argparse
import sys

import torch


def first_voter_trains_encoder() -> None:
    """Patch ``VotersModule.forward``: in training, voters 1..M-1 see detached features."""
    from xlt_engine.model.heads import VotersModule

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                voter(features if i == 0 or not self.training else features.detach())
                for i, voter in enumerate(self.voters)
            ]
        )

    VotersModule.forward = forward


def score_voters(folder: str, file: str, fmt: str, max_len: int) -> None:
    """The task score of the mean of the voters and of each voter alone on ``file``."""
    from xlt_engine.data.task import encode, read_task_file
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.engine.train.inference import predict_logits, predicted_labels, score
    from xlt_engine.model.task import load_task_model

    model, tok = load_task_model(folder), load_tokenizer(folder)
    data = read_task_file(file, fmt)
    enc = encode(data, tok, model.labels, max_len)
    logits = predict_logits(model, enc, tok.pad_id, torch.device("cpu"))
    rows = [("mean of the voters", logits)] + [
        (f"voter {i}", logits[i : i + 1]) for i in range(logits.shape[0])
    ]
    print(f"{folder} on {file} ({len(data)} examples, inputs cut to {max_len} tokens)")
    for name, part in rows:
        s = score(data, predicted_labels(enc, part, model.labels))
        types = s.get("per_type")
        extra = "  " + " ".join(f"{k} {100 * v:.1f}" for k, v in types.items()) if types else ""
        print(f"{name:>18}: {s['metric']} {100 * s['score']:.2f}{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first-voter-trains-encoder", action="store_true")
    ap.add_argument("--score", metavar="MODEL", help="score each voter of this task model")
    ap.add_argument("--file", help="the labeled file --score reads")
    ap.add_argument("--format", default="conll")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("cli", nargs=argparse.REMAINDER, help="-- then xlt-engine's arguments")
    args = ap.parse_args()
    if args.score:
        if not args.file:
            ap.error("--score needs --file")
        score_voters(args.score, args.file, args.format, args.max_len)
        return
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if not cli:
        ap.error("give xlt-engine's arguments after --, or --score")
    if args.first_voter_trains_encoder:
        first_voter_trains_encoder()
    from xlt_engine.cli import main as xlt_main

    sys.argv = ["xlt-engine", *cli]
    xlt_main()


if __name__ == "__main__":
    main()
