"""Load and save BERT checkpoints in Hugging Face layout (safetensors; ``.bin`` read-only).

A checkpoint is a folder with ``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``), or a single weights file with a
``config.json`` beside it (or a config passed in). Loading first *plans*: it reads only the file
headers, maps every Hugging Face key to a parameter here through a declarative table, and
collects every problem (missing key, unexpected key, wrong shape, non-float dtype, both
``LayerNorm.gamma`` and ``LayerNorm.weight``) into one ``ValueError``. Only then are tensors read,
one at a time, converted to the requested dtype and device and assigned into a model built on
the meta device, so peak memory is the model plus one tensor, never two full copies.

Key rules (DESIGN.md "Checkpoints"): the ``bert.`` prefix may be present or absent; legacy
``LayerNorm.gamma``/``LayerNorm.beta`` become ``weight``/``bias`` (under ``LayerNorm.`` only);
``embeddings.position_ids`` and the NSP classifier ``cls.seq_relationship.*`` are ignored; the
pooler (``pooler.dense``) is loaded when present (the encoder then has one) and saved back; a
checkpoint with no MLM head at all (an embedding model such as e5 or LaBSE, any ``BertModel``
save) loads into ``BertForMLM`` with a fresh head (transform initialised as BERT does, decoder
tied, bias zero), and the plan lists it under ``initialised``; the decoder weight is tied to the
word embeddings and may be absent (if present it must equal them);
``cls.predictions.decoder.bias``, if present, must equal ``cls.predictions.bias``. ``.bin`` files are read only through
``torch.load(weights_only=True)``: no pickle code runs.

The RoBERTa family (``model_type`` ``roberta`` / ``xlm-roberta``) reads and writes its own names
through the same table: ``roberta.`` for ``bert.``, ``lm_head.dense`` / ``lm_head.layer_norm`` /
``lm_head.bias`` / ``lm_head.decoder`` for ``cls.predictions.transform.dense`` / ``.LayerNorm`` /
``.bias`` / ``.decoder`` (their ``families.ModelFamily``: any registered family the same way).

Saving writes Hugging Face names (``bert.`` prefix, ``cls.predictions.*``, or the RoBERTa
family's), ``config.json`` and the tokenizer files into a temporary folder that replaces the
target only when complete.

Beside it: ``keys`` (the key table, families, architectures, aliases, dropped keys) and
``weights`` (the weight files read from their headers, one tensor at a time).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from xlt_engine.fileio import atomic_folder
from xlt_engine.model.bert import BertEncoder, BertForMLM, BertMLMHead, init_bert_weights
from xlt_engine.model.config import BertConfig
from xlt_engine.model.families import BERT, ModelFamily, get_family
from xlt_engine.model.keys import ALIASES, IGNORED_KEYS, hf_to_ours, ours_to_hf
from xlt_engine.model.weights import (
    FLOAT_DTYPES,
    WEIGHT_FILES,
    WeightSource,
    open_weights,
    read_index,
)

# ---------------------------------------------------------------------------------------------
# planning: headers only


@dataclass
class _Entry:
    source: WeightSource
    key: str  # the key as stored
    shape: tuple[int, ...]
    dtype: str


@dataclass
class CheckpointPlan:
    """What loading ``path`` would do, read from headers alone."""

    config: BertConfig
    config_path: Path | None
    weight_files: list[Path]
    target: str  # "mlm" or "encoder"
    tensors: dict[str, _Entry] = field(default_factory=dict)  # our name -> stored tensor
    aliases: list[tuple[_Entry, str]] = field(default_factory=list)  # checked, not loaded
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (stored key, HF key)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (stored key, reason)
    tokenizer_dir: Path | None = None
    tokenizer: object | None = None  # the tokenizer beside the weights, if any
    pooler: bool = False  # the checkpoint holds pooler.dense
    initialised: list[str] = field(default_factory=list)  # our names built fresh (no MLM head)

    @property
    def stored_dtypes(self) -> dict[str, int]:
        """Stored dtype -> number of loaded tensors."""
        out: dict[str, int] = {}
        for e in self.tensors.values():
            out[e.dtype] = out.get(e.dtype, 0) + 1
        return out


def _resolve(path: Path, config: BertConfig | None) -> tuple[list[Path], BertConfig, Path | None]:
    """Weight files, config and config path for a checkpoint folder or file."""
    path = Path(path)
    if path.is_dir():
        folder = path
        found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
        if not found:
            raise ValueError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)})")
        weights = found[0]
    elif path.is_file():
        folder, weights = path.parent, path
    else:
        raise ValueError(f"{path}: no such checkpoint file or folder")
    files = read_index(weights) if weights.name.endswith(".index.json") else [weights]
    config_path = None
    if config is None:
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ValueError(
                f"{path}: no config.json beside the weights (pass a BertConfig to load it)"
            )
        config = BertConfig.from_json(config_path)
    return files, config, config_path


def _normalise(key: str, family: ModelFamily = BERT) -> tuple[str, bool]:
    """Strip the family's prefix (``bert.``, ``roberta.``) and read its head keys in BERT names;
    rename legacy ``LayerNorm.gamma/beta``. Returns (key, renamed by gamma/beta)."""
    prefix, head = family.prefix, family.head_keys
    if key.startswith(prefix):
        key = key[len(prefix) :]
    for theirs, bert in head:
        if key.startswith(theirs):
            key = bert + key[len(theirs) :]
            break
    new = re.sub(r"(^|\.)LayerNorm\.gamma\Z", r"\1LayerNorm.weight", key)
    new = re.sub(r"(^|\.)LayerNorm\.beta\Z", r"\1LayerNorm.bias", new)
    return new, new != key


def expected_shapes(config: BertConfig, pooler: bool = False) -> dict[str, tuple[int, ...]]:
    """Our BertForMLM parameter names and shapes, computed without allocating."""
    with torch.device("meta"):
        model = BertForMLM(config, pooler)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _check_sizes(config: BertConfig, where: Path, shapes: dict[str, tuple[str, tuple]]) -> None:
    """The config's sizes against the stored tensors' headers, before a model is built from the
    config (a config.json claiming 1,000,000 layers or a vocabulary of 2**63 would otherwise
    allocate, or fail deep in torch, before the key mismatch is named)."""
    found = []

    def compare(key: str, claimed: int, tensor: str, dim: int) -> None:
        stored, shape = shapes.get(tensor, (tensor, ()))  # normalised name -> stored key, shape
        if len(shape) > dim and shape[dim] != claimed:
            found.append(f"{key} = {claimed:,}, but {stored} has {shape[dim]:,} (dim {dim})")

    compare("vocab_size", config.vocab_size, "embeddings.word_embeddings.weight", 0)
    compare("hidden_size", config.hidden_size, "embeddings.word_embeddings.weight", 1)
    compare(
        "max_position_embeddings",
        config.max_position_embeddings,
        "embeddings.position_embeddings.weight",
        0,
    )
    compare("type_vocab_size", config.type_vocab_size, "embeddings.token_type_embeddings.weight", 0)
    compare(
        "intermediate_size",
        config.intermediate_size,
        "encoder.layer.0.intermediate.dense.weight",
        0,
    )
    layers = {int(m[1]) for k in shapes if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    if layers and config.num_hidden_layers > max(layers) + 1:
        found.append(
            f"num_hidden_layers = {config.num_hidden_layers:,}, but the weights hold "
            f"{max(layers) + 1} layers"
        )
    if found:
        raise ValueError(f"{where}: the config does not match the weights: " + "; ".join(found))


def _config_hint(ours: str, config: BertConfig) -> str:
    """The config values a tensor's shape follows, for a shape mismatch's message."""
    if ours == "encoder.embeddings.word.weight":
        return f" (config vocab_size={config.vocab_size}, hidden_size={config.hidden_size})"
    if ours == "head.bias":
        return f" (config vocab_size={config.vocab_size})"
    if ours == "encoder.embeddings.position.weight":
        return f" (config max_position_embeddings={config.max_position_embeddings})"
    return ""


def _check_tokenizer(plan: CheckpointPlan, folder: Path, keep: bool) -> list[str]:
    """Check the tokenizer beside the weights, if any (``keep``: load it into ``plan``); the
    problems: one that does not load, or one with more tokens than the embedding table has
    rows."""
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()):
        return []
    plan.tokenizer_dir = folder
    from xlt_engine.data.tokenizer import load_tokenizer, tokenizer_vocab_size

    try:
        if keep:
            plan.tokenizer = load_tokenizer(folder)
            n = plan.tokenizer.vocab_size
        else:
            n = tokenizer_vocab_size(folder)
    except ValueError as err:
        return [f"tokenizer: {err}"]
    vocab = plan.config.vocab_size
    if n > vocab:
        return [
            f"tokenizer in {folder} has {n} tokens but config vocab_size is "
            f"{vocab}: ids past the embedding table would crash"
        ]
    return []


def _place_keys(
    plan: CheckpointPlan, sources: list, kind: ModelFamily, expected: dict[str, tuple[int, ...]]
) -> tuple[list[str], list[str]]:
    """Each stored key into ``plan`` (our tensor, an alias to check, or ignored, with why); the
    problems found (duplicates, dtypes, shapes) and the unexpected keys."""
    problems: list[str] = []
    unexpected: list[str] = []
    seen: dict[str, str] = {}  # normalised HF key -> stored key
    for source in sources:
        where = f" in {source.path.name}" if len(sources) > 1 else ""
        for key in source.keys():
            hf, renamed = _normalise(key, kind)
            if hf in seen:
                problems.append(
                    f"{key!r} and {seen[hf]!r} are the same parameter ({hf}){where}: "
                    "both present (e.g. LayerNorm.gamma and LayerNorm.weight)"
                )
                continue
            seen[hf] = key
            if renamed:
                plan.renamed.append((key, hf))
            entry = _Entry(source, key, source.shape(key), source.dtype_name(key))
            reason = next((why for rx, why in IGNORED_KEYS if rx.match(hf)), None)
            if reason is None and plan.target == "encoder" and hf.startswith("cls.predictions."):
                reason = "MLM head (not part of an encoder)"
            if reason is not None:
                plan.ignored.append((key, reason))
                continue
            if hf in ALIASES:
                plan.aliases.append((entry, ALIASES[hf]))
                continue
            ours = hf_to_ours(hf)
            if ours is None or ours not in expected:
                unexpected.append(key + where)
                continue
            if entry.dtype not in FLOAT_DTYPES:
                problems.append(f"{key}: dtype {entry.dtype} is not a floating-point type")
            if entry.shape != expected[ours]:
                problems.append(
                    f"{key}: shape {list(entry.shape)} in the checkpoint, "
                    f"{list(expected[ours])} expected{_config_hint(ours, plan.config)}"
                )
            plan.tensors[ours] = entry
    return problems, unexpected


def plan_checkpoint(
    path: str | Path,
    target: str = "mlm",
    config: BertConfig | None = None,
    keep_tokenizer: bool = True,
) -> CheckpointPlan:
    """Check a checkpoint from its headers and say what loading it would do.

    ``target`` is ``"mlm"`` (BertForMLM: encoder and MLM head) or ``"encoder"`` (BertEncoder:
    MLM head keys are then ignored). Raises one ``ValueError`` listing every problem.
    ``keep_tokenizer``: the tokenizer beside the weights is loaded into ``plan.tokenizer``;
    else only checked (``tokenizer_vocab_size``: parsed once per process for the same files).
    """
    if target not in ("mlm", "encoder"):
        raise ValueError(f"target must be 'mlm' or 'encoder', got {target!r}")
    files, config, config_path = _resolve(Path(path), config)
    plan = CheckpointPlan(config, config_path, files, target)
    kind = get_family(config.model_type)
    sources = [open_weights(f) for f in files]
    stored = [_normalise(k, kind)[0] for src in sources for k in src.keys()]
    shapes = {_normalise(k, kind)[0]: (k, src.shape(k)) for src in sources for k in src.keys()}
    _check_sizes(config, config_path or Path(path), shapes)  # before building anything from it
    plan.pooler = any(k.startswith("pooler.dense.") for k in stored)
    expected = expected_shapes(config, plan.pooler)
    if target == "encoder":
        expected = {k: v for k, v in expected.items() if k.startswith("encoder.")}
    elif not any(k.startswith("cls.predictions.") for k in stored):
        # no MLM head at all: build it fresh rather than call every head key missing
        plan.initialised = sorted(k for k in expected if k.startswith("head."))
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}

    problems, unexpected = _place_keys(plan, sources, kind, expected)
    for entry, ours in plan.aliases:
        if ours in expected and entry.shape != expected[ours]:
            problems.append(
                f"{entry.key}: shape {list(entry.shape)}, {list(expected[ours])} expected"
            )
    missing = sorted(set(expected) - set(plan.tensors), key=_natural)
    if missing:
        problems.append("missing keys: " + ", ".join(_hf_name(m, kind) for m in missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(sorted(unexpected, key=_natural)))

    problems += _check_tokenizer(plan, files[0].parent, keep_tokenizer)
    if problems:
        raise ValueError(f"{path}: cannot load checkpoint:\n  - " + "\n  - ".join(problems))
    return plan


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _hf_name(ours: str, kind: ModelFamily = BERT) -> str:
    try:
        return ours_to_hf(ours, kind)
    except KeyError:
        return ours


# ---------------------------------------------------------------------------------------------
# loading


def _check_alias(entry: _Entry, target: torch.Tensor, ours: str, chunk_rows: int = 4096) -> None:
    """A tied copy must equal the tensor it duplicates; compared in row chunks so the copy is
    never fully in memory."""
    n = entry.shape[0]
    for start in range(0, n, chunk_rows):
        stored = entry.source.rows(entry.key, start, min(n, start + chunk_rows))
        mine = target[start : start + stored.shape[0]]
        if not torch.equal(stored.to(device=mine.device, dtype=mine.dtype), mine):
            raise ValueError(
                f"{entry.source.path}: {entry.key} is tied and must equal "
                f"{_hf_name(ours)}, but differs (rows {start}..)"
            )


class NonFiniteWeights:
    """Collects the tensors of a checkpoint that hold NaN or inf, as they are read (each is in
    memory anyway), and refuses them together: a checkpoint of a diverged run would otherwise
    load silently and fail at a later stage's first step, blaming the training."""

    SHOWN = 5

    def __init__(self, where: str | Path):
        self.where = where
        self.bad: list[tuple[str, int, int]] = []  # (name, non-finite values, values)
        self.overflow: list[tuple[str, int, int]] = []  # finite as stored, not once converted

    @staticmethod
    def count(t: torch.Tensor) -> int:
        if not t.is_floating_point():
            return 0
        # a sum is inf or NaN whenever a value is: a finite one (nearly always) ends the check in
        # one pass with no mask (e5-small's 118M weights: 0.06 s, against 1.42 s counting them;
        # benchmarks/results/load_cpu_20261127.txt)
        wide = torch.float64 if t.dtype == torch.float64 else torch.float32
        if bool(torch.isfinite(t.sum(dtype=wide))):
            return 0
        return t.numel() - int(torch.isfinite(t).sum())  # or finite values that overflowed

    def check(self, name: str, t: torch.Tensor, converted: torch.Tensor | None = None) -> None:
        """``t`` as stored, and ``converted``, what the model will hold (another dtype): a
        finite value beyond the new dtype's range becomes inf there."""
        if not t.numel():
            return
        if n := self.count(t):
            self.bad.append((name, n, t.numel()))
        elif converted is not None and (n := self.count(converted)):
            self.overflow.append((name, n, t.numel()))

    @classmethod
    def refuse_writing(cls, where: str | Path, tensors: dict[str, torch.Tensor]) -> None:
        """The rule for every tensor the engine writes: none holding NaN or inf (``where``:
        the file or folder it was going to)."""
        found = cls(where)
        for k in sorted(tensors):
            found.check(k, tensors[k])
        found.refuse(False, writing=True)

    def refuse(self, allowed: bool, writing: bool = False) -> None:
        """Raise for what ``check`` found (``allowed``: not for NaN / inf as stored);
        ``writing``: the tensors were about to be written, and nothing was."""
        if self.overflow:  # never allowed: the values were fine, the chosen dtype is not
            shown = ", ".join(f"{k} ({n:,} of {m:,} values)" for k, n, m in self.overflow[:5])
            raise ValueError(
                f"{self.where}: {len(self.overflow)} tensor(s) hold finite values beyond the "
                f"range of the dtype asked for, which would load as inf: {shown}; load it in "
                "float32 or bfloat16"
            )
        if not self.bad or allowed:
            return
        shown = ", ".join(f"{k} ({n:,} of {m:,} values)" for k, n, m in self.bad[: self.SHOWN])
        more = len(self.bad) - self.SHOWN
        why = (
            "; nothing was written (a diverged model?)"
            if writing
            else ". The checkpoint is damaged (a diverged run?); load it for analysis with "
            "allow_nonfinite=True"
        )
        raise ValueError(
            f"{self.where}: {len(self.bad)} tensor(s) hold NaN or inf: {shown}"
            + (f" and {more} more" if more > 0 else "")
            + why
        )


def _materialise(
    plan: CheckpointPlan,
    dtype: torch.dtype | None,
    device: torch.device | str,
    allow_nonfinite: bool = False,
) -> BertForMLM | BertEncoder:
    stored = {FLOAT_DTYPES[e.dtype] for e in plan.tensors.values()}
    if dtype is None:
        if len(stored) != 1:
            raise ValueError(
                f"checkpoint mixes dtypes {sorted(map(str, stored))}: pass dtype= to load it"
            )
        dtype = stored.pop()
    if torch.device(device).type == "cpu":  # on an accelerator its own allocator says
        size = torch.empty((), dtype=dtype).element_size()
        plan.config.check_fits(size, str(plan.config_path or plan.weight_files[0]))
    with torch.device("meta"):
        model = BertForMLM(plan.config, plan.pooler)
    state: dict[str, torch.Tensor] = {}
    files = plan.weight_files
    nonfinite = NonFiniteWeights(files[0] if len(files) == 1 else files[0].parent)
    for ours, entry in plan.tensors.items():
        # one stored tensor at a time: read, check, convert, keep only the converted copy
        stored = entry.source.tensor(entry.key)
        state[ours] = stored.to(device=device, dtype=dtype)
        nonfinite.check(entry.key, stored, state[ours] if stored.dtype != dtype else None)
        del stored
    nonfinite.refuse(allow_nonfinite)
    if plan.initialised:  # no MLM head stored: BERT's initialisation, bias zero
        with torch.random.fork_rng(devices=[]):  # the same head for the same checkpoint, always
            torch.manual_seed(0)
            head = BertMLMHead(plan.config)
            init_bert_weights(head, plan.config.initializer_range)
        torch.nn.init.zeros_(head.bias)
        for name, value in head.state_dict().items():
            state["head." + name] = value.to(device=device, dtype=dtype)
    if plan.target == "encoder":
        encoder = model.encoder
        encoder.load_state_dict(
            {k[len("encoder.") :]: v for k, v in state.items()}, strict=True, assign=True
        )
        result: BertForMLM | BertEncoder = encoder
    else:
        model.load_state_dict(state, strict=True, assign=True)
        result = model
    params = dict(model.named_parameters())
    for entry, ours in plan.aliases:  # only for target "mlm": head keys are ignored otherwise
        _check_alias(entry, params[ours].detach(), ours)
    return result


def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    config: BertConfig | None = None,
    allow_nonfinite: bool = False,
) -> BertForMLM:
    """Load a BERT MLM checkpoint (encoder + MLM head) in Hugging Face layout.

    ``dtype=None`` keeps the stored dtype; otherwise every tensor is converted (fp32 default:
    master weights for training). The model is returned in eval mode on ``device``. A
    checkpoint with no MLM head gets a fresh one (``plan_checkpoint(path).initialised`` names
    its parameters). A tensor holding NaN or inf is refused, naming it (``allow_nonfinite``
    loads it anyway, for analysis).
    """
    plan = plan_checkpoint(path, "mlm", config, keep_tokenizer=False)  # checked, not held
    model = _materialise(plan, dtype, device, allow_nonfinite)
    return model.eval()


def load_encoder(
    path: str | Path,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    config: BertConfig | None = None,
    allow_nonfinite: bool = False,
) -> BertEncoder:
    """Load only the encoder of a BERT checkpoint (an MLM head, if stored, is ignored); NaN or
    inf weights are refused as in ``load_pretrained``."""
    plan = plan_checkpoint(path, "encoder", config, keep_tokenizer=False)  # checked, not held
    model = _materialise(plan, dtype, device, allow_nonfinite)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# saving


def hf_state_dict(model: BertForMLM | BertEncoder) -> dict[str, torch.Tensor]:
    """Hugging Face named tensors (CPU, contiguous) for ``model``; the tied decoder is omitted,
    as transformers itself omits it."""
    if isinstance(model, BertEncoder):
        named = {"encoder." + k: v for k, v in model.state_dict().items()}
    elif isinstance(model, BertForMLM):
        named = model.state_dict()
    else:
        raise TypeError(f"save_pretrained takes a BertForMLM or BertEncoder, got {type(model)}")
    kind = get_family(model.config.model_type)
    return {ours_to_hf(k, kind): v.detach().to("cpu").contiguous() for k, v in named.items()}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt")


def _check_replaceable(out_dir: Path) -> None:
    """``save_pretrained`` replaces ``out_dir`` whole, so it must be an earlier checkpoint (or
    empty): never a folder holding anything else."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    foreign = [
        p.name for p in out_dir.iterdir() if not (p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    ]
    if foreign:
        raise ValueError(
            f"{out_dir}: exists and holds more than a checkpoint ({', '.join(sorted(foreign)[:5])}); "
            "refusing to replace it: choose another folder"
        )


def save_pretrained(
    model: BertForMLM | BertEncoder,
    out_dir: str | Path,
    tokenizer=None,
    *,
    dtype: torch.dtype | None = None,
    extra=None,
    replace_any: bool = False,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (Hugging Face key names) and, if given,
    the tokenizer files into ``out_dir``, atomically: everything goes to a temporary sibling
    folder that replaces ``out_dir`` only once complete. An existing ``out_dir`` is replaced only
    if it holds nothing but checkpoint files (``replace_any``: the caller claimed it, see
    ``outputs.claim_output``). ``dtype`` converts on the way out. ``extra(folder)`` writes more
    files (``.json`` / ``.safetensors``: a task head) into the folder before the swap. A tensor
    holding NaN or inf (after ``dtype``) is refused, naming it: nothing is written.
    """
    out_dir = Path(out_dir)
    config: BertConfig = model.config
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{config.vocab_size}"
        )
    tensors = hf_state_dict(model)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    dtypes = {v.dtype for v in tensors.values()}
    cfg = config.to_dict()
    with_head, encoder_only = get_family(config.model_type).architectures
    cfg["architectures"] = [with_head if isinstance(model, BertForMLM) else encoder_only]
    cfg["dtype"] = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else "float32"
    cfg["tie_word_embeddings"] = True
    NonFiniteWeights.refuse_writing(out_dir, tensors)

    if not replace_any:
        _check_replaceable(out_dir)
    with atomic_folder(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", cfg)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if extra is not None:
            extra(tmp)
    return out_dir
