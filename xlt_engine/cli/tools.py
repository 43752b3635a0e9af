"""The tool commands: ``init`` (a random-weight model for trials with no download),
``export`` (a task model as a Hugging Face classification folder), ``inspect`` (what loading a
checkpoint would do, from file headers alone), ``bench``, and the data helpers ``xnli-parallel``
and ``corpus``. ``xlt_engine.cli`` adds them to its group (``COMMANDS``)."""

from __future__ import annotations

from pathlib import Path

import click

from xlt_engine.cli.options import file_option, overwrite_option
from xlt_engine.fileio import check_writable
from xlt_engine.inputs import read_json
from xlt_engine.outputs import claim_output, record_output


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--vocab",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="vocab.txt, tokenizer.json or a folder with them; default: a small embedded vocabulary",
)
@click.option("--layers", default=2, show_default=True, help="num_hidden_layers")
@click.option("--hidden", default=128, show_default=True, help="hidden_size")
@click.option("--heads", default=2, show_default=True, help="num_attention_heads")
@click.option("--intermediate", default=512, show_default=True, help="intermediate_size")
@click.option("--max-positions", default=512, show_default=True, help="max_position_embeddings")
@click.option("--seed", default=0, show_default=True)
@overwrite_option("OUT folder")
def init(
    out: Path,
    vocab: Path | None,
    layers: int,
    hidden: int,
    heads: int,
    intermediate: int,
    max_positions: int,
    seed: int,
    overwrite: bool,
) -> None:
    """Write a random-weight BERT MLM model in Hugging Face layout to OUT."""
    import torch

    from xlt_engine.data.tokenizer import default_tokenizer, load_tokenizer
    from xlt_engine.model import BertConfig, BertForMLM, save_pretrained

    check_writable(out, "OUT")
    reads = [vocab] if vocab is not None else []
    claim_output(out, "OUT", "init", folder=True, reads=reads, overwrite=overwrite)
    tokenizer = load_tokenizer(vocab) if vocab is not None else default_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
    )
    config.check_fits(4, "--layers/--hidden/--intermediate")  # before allocating
    torch.manual_seed(seed)
    model = BertForMLM(config)
    save_pretrained(model, out, tokenizer, replace_any=True)  # claimed above
    record_output(out, "init", entries=[p.name for p in out.iterdir()])
    click.echo(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


def run_plugins(model: Path) -> None:
    """A model a stage made (``<stage folder>/model``): import the plug-ins its run's saved
    config names (a model family of one's own), as ``run`` did."""
    from xlt_engine.engine.experiment.execute import load_plugins

    for folder in [model, *model.resolve().parents][:5]:  # <stage>/round-1/hard/model too
        if (folder / "fingerprint.json").is_file() and (folder / "config.json").is_file():
            load_plugins(folder)
            return


@click.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@overwrite_option("OUT folder")
def export(model: Path, out: Path, overwrite: bool) -> None:
    """Write a fine-tuned task model with the linear head as a transformers classification
    folder (BertForTokenClassification, XLMRobertaForSequenceClassification, ...: id2label and
    label2id included), so AutoModelFor...Classification and pipeline("ner") load it. The
    Voters Module has no exact transformers equivalent and is refused, with the reason."""

    from xlt_engine.model.export import export_hf

    check_writable(out, "OUT")
    run_plugins(model)
    folder = export_hf(model, out, overwrite=overwrite)
    arch = read_json(folder / "config.json")["architectures"][0]
    click.echo(f"wrote {folder} ({arch}); load it with transformers' AutoModelFor... classes")


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--encoder", is_flag=True, help="inspect as an encoder only (MLM head ignored)")
def inspect(path: Path, encoder: bool) -> None:
    """Report a checkpoint: config, parameters by part, dtypes, tokenizer, renamed and
    ignored keys. Reads file headers only; no weights are loaded."""
    from xlt_engine.model import plan_checkpoint
    from xlt_engine.model.describe import describe

    if path.is_dir():
        run_plugins(path)
    plan = plan_checkpoint(path, "encoder" if encoder else "mlm")
    for line in describe(path, plan):
        click.echo(line)


@click.group()
def bench() -> None:
    """Benchmarks (results as a table, plus JSON/CSV under benchmarks/results/)."""


@bench.command("kernels")
@click.option(
    "--op",
    "ops",
    multiple=True,
    type=click.Choice(["mlm", "mse", "kl", "voters", "threshold", "supcon"]),
    help="ops to time (repeatable; default: all)",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    type=click.Choice(["triton", "torch", "compile", "hf", "liger"]),
    help="providers (repeatable; default: all on a GPU, torch and compile on CPU)",
)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["forward", "backward", "full", "frozen"]),
    help="modes (repeatable; default: all); frozen: full with the MLM weight frozen (BTF)",
)
@click.option("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when present)")
@click.option("--reps", type=int, default=None, help="timed repetitions on CPU / backward mode")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="append the run to the JSON and CSV in this folder (e.g. benchmarks/results); "
    "without it the table is only printed",
)
@click.option("--no-save", is_flag=True, help="print the table only, even with --out")
@overwrite_option("result file in --out")
def bench_kernels(ops, providers, modes, device, reps, out, no_save, overwrite) -> None:
    """Time the fused kernels against torch, torch.compile, Hugging Face and Liger."""
    from xlt_engine.bench import kernels as bench_mod

    if out is not None and not no_save:
        check_writable(out, "--out")
    bench_mod.run(
        ops=ops or bench_mod.OPS,
        providers=providers or None,
        modes=modes or bench_mod.MODES,
        device=device,
        reps=reps,
        out_dir=None if no_save else out,  # None unless --out
        echo=click.echo,
        overwrite=overwrite,
    )


@click.command("xnli-parallel")
@click.option(
    "--xnli",
    "xnli_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="the folder of XNLI's dev-<lang>.tsv files",
)
@click.option("--source", default="en", show_default=True, help="the labeled language")
@click.option("--languages", required=True, help="target languages, by commas (e.g. de,fr,zh)")
@click.option("-n", "n", type=int, default=200, show_default=True, help="source items drawn")
@click.option("--seed", type=int, default=42, show_default=True)
@file_option("--out", required=True, help="the parallel JSONL file (written atomically)")
@overwrite_option("--out file")
def xnli_parallel(xnli_dir, source, languages, n, seed, out, overwrite) -> None:
    """A parallel file (finetune.parallel_file) from XNLI's dev files, whose rows are parallel
    across languages: n items of the source's dev file and their rows in each language."""
    from xlt_engine.data.parallel import build_xnli_parallel

    langs = [x.strip() for x in languages.split(",") if x.strip()]
    claim_output(out, "--out", "xnli-parallel", reads=[xnli_dir], overwrite=overwrite)
    rows = build_xnli_parallel(xnli_dir, source, langs, n, seed, out)
    record_output(out, "xnli-parallel")
    click.echo(f"wrote {out}: {n} items x {len(langs)} languages = {rows} rows")


@click.command()
@file_option(
    "--source",
    "sources",
    multiple=True,
    required=True,
    help="CoNLL training file(s) whose entities are searched for (repeatable)",
)
@file_option(
    "--target-text",
    required=True,
    help="target-language plain text, one sentence per line (streamed)",
)
@file_option("--entity-map", default=None, help="TSV of 'source name<TAB>target name' rows")
@file_option("--out", required=True, help="output text file (written atomically)")
@click.option("--max-per-entity", default=100, show_default=True, help="lines kept per name")
@click.option("--min-length", default=2, show_default=True, help="shortest name, in characters")
@click.option("--top", default=10, show_default=True, help="entities listed in the summary")
@overwrite_option("--out file")
def corpus(sources, target_text, entity_map, out, max_per_entity, min_length, top, overwrite):
    """Select target-language lines that hold entities of the source training data."""
    import time

    from xlt_engine.data.conll import read_conll
    from xlt_engine.data.corpus import build_corpus, entity_names, read_entity_map

    check_writable(out.parent, "--out")
    reads = [*sources, target_text, *([entity_map] if entity_map else [])]
    claim_output(out, "--out", "corpus", reads=reads, overwrite=overwrite)
    files = [read_conll(p) for p in sources]
    mapping = read_entity_map(entity_map) if entity_map is not None else None
    names = entity_names(files, mapping, min_length)
    start = time.perf_counter()
    stats = build_corpus(names, target_text, out, max_per_entity)
    record_output(out, "corpus")
    seconds = time.perf_counter() - start
    click.echo(stats.summary(top))
    rate = stats.lines_read / seconds if seconds > 0 else float("inf")
    click.echo(f"wrote {out} in {seconds:.1f} s ({rate:,.0f} lines/s)")


COMMANDS = [init, export, inspect, bench, xnli_parallel, corpus]
