"""A checkpoint described for a reader (``xlt-engine inspect``): its config, parameters by part,
stored dtypes, tied copies, renamed and ignored keys, what is built fresh, the pooler and the
tokenizer. It reads what ``plan_checkpoint`` read (file headers); no weights are loaded."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from xlt_engine.model.checkpoint import CheckpointPlan

PARTS = ("embeddings", "encoder layers", "mlm head")


def part_of(name: str) -> str:
    if name.startswith("encoder.embeddings."):
        return "embeddings"
    if name.startswith("encoder.layers."):
        return "encoder layers"
    return "mlm head"


def _model(path: Path, plan: CheckpointPlan) -> list[str]:
    c = plan.config
    return [
        f"checkpoint   {path}",
        f"config       {plan.config_path}",
        "weights      " + ", ".join(str(f) for f in plan.weight_files),
        f"model        BERT L={c.num_hidden_layers} H={c.hidden_size} heads={c.num_attention_heads} "
        f"FFN={c.intermediate_size} V={c.vocab_size} max_pos={c.max_position_embeddings} "
        f"act={c.hidden_act} eps={c.layer_norm_eps}",
    ]


def _parameters(plan: CheckpointPlan) -> list[str]:
    layers = plan.config.num_hidden_layers
    counts: dict[str, int] = defaultdict(int)
    for name, entry in plan.tensors.items():
        counts[part_of(name)] += math.prod(entry.shape)
    out = ["parameters"]
    for part in (p for p in PARTS if p in counts):
        extra = f" ({layers} x {counts[part] // layers:,})" if part == "encoder layers" else ""
        out.append(f"  {part:<14} {counts[part]:>14,}{extra}")
    out.append(f"  {'total':<14} {sum(counts.values()):>14,}")
    return out


def _keys(plan: CheckpointPlan) -> list[str]:
    out = ["stored dtypes " + ", ".join(f"{k} x{v}" for k, v in sorted(plan.stored_dtypes.items()))]
    if plan.aliases:
        copies = ", ".join(e.key for e, _ in plan.aliases)
        out.append(f"tied copies  {copies} (checked equal on load)")
    out.append(f"renamed keys {len(plan.renamed)}")
    out += [f"  {old} -> {new}" for old, new in plan.renamed]
    out.append(f"ignored keys {len(plan.ignored)}")
    out += [f"  {key}: {why}" for key, why in plan.ignored]
    if plan.initialised:
        out.append(
            f"initialised  {len(plan.initialised)}: no MLM head in the checkpoint, so btf builds "
            "one fresh (" + ", ".join(plan.initialised) + ")"
        )
    if plan.pooler:
        out.append("pooler       loaded (pooler.dense): the pooler representation is available")
    return out


def _tokenizer(plan: CheckpointPlan) -> list[str]:
    tok = plan.tokenizer  # loaded once, while the plan checked it against vocab_size
    if tok is None:
        return ["tokenizer    none beside the weights"]
    s = tok.settings
    if s is not None:  # BERT WordPiece
        out = [
            f"tokenizer    {tok.kind}, {tok.vocab_size:,} tokens, "
            f"do_lower_case={s.do_lower_case}, strip_accents={s.strip_accents}, "
            f"tokenize_chinese_chars={s.tokenize_chinese_chars} ({s.source})"
        ]
    else:
        out = [f"tokenizer    {tok.kind}, {tok.vocab_size:,} tokens (its own pipeline)"]
    ids = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
    roles = ("pad", "unk", "cls", "sep", "mask")
    out.append(
        "  special ids "
        + " ".join(f"{r} {tok.special_tokens[r]}={i}" for r, i in zip(roles, ids, strict=True))
    )
    for what, done in (("padding", tok.padding_disabled), ("truncation", tok.truncation_disabled)):
        if done:
            out.append(f"  {what}     the file enables {what}; turned off (the engine does it)")
    sample = "Zürich liegt in der Schweiz."
    out.append(f"  sample      {sample!r} -> {tok.tokenize(sample)}")
    return out


def describe(path: Path, plan: CheckpointPlan) -> list[str]:
    """The lines ``xlt-engine inspect`` prints for the checkpoint at ``path``."""
    return [*_model(path, plan), *_parameters(plan), *_keys(plan), *_tokenizer(plan)]
