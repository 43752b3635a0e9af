"""Command line: a thin click layer that turns options into library calls.

``xlt-engine init`` writes a random-weight model (for trials with no download);
``xlt-engine inspect`` reports what loading a checkpoint would do, from file headers alone.
"""

from __future__ import annotations

from pathlib import Path

import click

from xlt_engine import __version__
from xlt_engine.fileio import check_not_read, check_writable, claim_output, record_output


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err))


class _Main(click.Group):
    """The command group, keeping the arguments it was given (``again`` repeats them)."""

    def parse_args(self, ctx, args):
        ctx.meta["xlt_engine.argv"] = list(args)
        return super().parse_args(ctx, args)


def again(resume: bool = True) -> str:
    """The exact command that repeats the one running (its arguments as given, quoted for a
    shell), with ``--resume`` where it continues an interrupted run."""
    import shlex

    ctx = click.get_current_context()
    argv = [a for a in ctx.find_root().meta.get("xlt_engine.argv", []) if a != "--resume"]
    return shlex.join(["xlt-engine", *argv, *(["--resume"] if resume else [])])


def _resumable() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and any(p.name == "resume" for p in ctx.command.params)


def _overwrite_option(what: str):
    return click.option(
        "--overwrite",
        is_flag=True,
        help=f"replace an existing {what} that this command did not write (never a file it reads)",
    )


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xlt-engine")
def main() -> None:
    """xlt-engine: zero-shot cross-lingual transfer without parallel data."""


@main.command()
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
@_overwrite_option("OUT folder")
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

    try:
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
    except ValueError as err:
        _fail(err)
    click.echo(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


@main.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_overwrite_option("OUT folder")
def export(model: Path, out: Path, overwrite: bool) -> None:
    """Write a fine-tuned task model with the linear head as a transformers classification
    folder (BertForTokenClassification, XLMRobertaForSequenceClassification, ...: id2label and
    label2id included), so AutoModelFor...Classification and pipeline("ner") load it. The
    Voters Module has no exact transformers equivalent and is refused, with the reason."""
    import json

    from xlt_engine.model.export import export_hf

    try:
        check_writable(out, "OUT")
        folder = export_hf(model, out, overwrite=overwrite)
    except ValueError as err:
        _fail(err)
    arch = json.loads((folder / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    click.echo(f"wrote {folder} ({arch}); load it with transformers' AutoModelFor... classes")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--encoder", is_flag=True, help="inspect as an encoder only (MLM head ignored)")
def inspect(path: Path, encoder: bool) -> None:
    """Report a checkpoint: config, parameters by part, dtypes, tokenizer, renamed and
    ignored keys. Reads file headers only; no weights are loaded."""
    from xlt_engine.model import plan_checkpoint
    from xlt_engine.model.describe import describe

    try:
        plan = plan_checkpoint(path, "encoder" if encoder else "mlm")
    except ValueError as err:
        _fail(err)
    for line in describe(path, plan):
        click.echo(line)


def _folder_option(default: str, help: str):
    """``--out`` naming a folder, with a default."""
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
        help=help,
    )


@main.group()
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
def bench_kernels(ops, providers, modes, device, reps, out, no_save) -> None:
    """Time the fused kernels against torch, torch.compile, Hugging Face and Liger."""
    from xlt_engine.bench import kernels as bench_mod

    if out is not None and not no_save:
        try:
            check_writable(out, "--out")
        except ValueError as err:
            _fail(err)
    bench_mod.run(
        ops=ops or bench_mod.OPS,
        providers=providers or None,
        modes=modes or bench_mod.MODES,
        device=device,
        reps=reps,
        out_dir=None if no_save else out,  # None unless --out
        echo=click.echo,
    )


def _file_option(*names: str, **kwargs):
    """An option naming one file (not a folder), given as a ``Path``."""
    return click.option(*names, type=click.Path(dir_okay=False, path_type=Path), **kwargs)


@main.command("xnli-parallel")
@click.option(
    "--xnli", "xnli_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="the folder of XNLI's dev-<lang>.tsv files",
)  # fmt: skip
@click.option("--source", default="en", show_default=True, help="the labeled language")
@click.option("--languages", required=True, help="target languages, by commas (e.g. de,fr,zh)")
@click.option("-n", "n", type=int, default=200, show_default=True, help="source items drawn")
@click.option("--seed", type=int, default=42, show_default=True)
@_file_option("--out", required=True, help="the parallel JSONL file (written atomically)")
@_overwrite_option("--out file")
def xnli_parallel(xnli_dir, source, languages, n, seed, out, overwrite) -> None:
    """A parallel file (finetune.parallel_file) from XNLI's dev files, whose rows are parallel
    across languages: n items of the source's dev file and their rows in each language."""
    from xlt_engine.data.parallel import build_xnli_parallel

    langs = [x.strip() for x in languages.split(",") if x.strip()]
    try:
        claim_output(out, "--out", "xnli-parallel", reads=[xnli_dir], overwrite=overwrite)
        rows = build_xnli_parallel(xnli_dir, source, langs, n, seed, out)
        record_output(out, "xnli-parallel")
    except ValueError as err:
        _fail(err)
    click.echo(f"wrote {out}: {n} items x {len(langs)} languages = {rows} rows")


@main.command()
@_file_option(
    "--source", "sources", multiple=True, required=True,
    help="CoNLL training file(s) whose entities are searched for (repeatable)",
)  # fmt: skip
@_file_option(
    "--target-text", required=True,
    help="target-language plain text, one sentence per line (streamed)",
)  # fmt: skip
@_file_option("--entity-map", default=None, help="TSV of 'source name<TAB>target name' rows")
@_file_option("--out", required=True, help="output text file (written atomically)")
@click.option("--max-per-entity", default=100, show_default=True, help="lines kept per name")
@click.option("--min-length", default=2, show_default=True, help="shortest name, in characters")
@click.option("--top", default=10, show_default=True, help="entities listed in the summary")
@_overwrite_option("--out file")
def corpus(sources, target_text, entity_map, out, max_per_entity, min_length, top, overwrite):
    """Select target-language lines that hold entities of the source training data."""
    import time

    from xlt_engine.data.conll import read_conll
    from xlt_engine.data.corpus import build_corpus, entity_names, read_entity_map

    try:
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
    except ValueError as err:
        _fail(err)
    click.echo(stats.summary(top))
    rate = stats.lines_read / seconds if seconds > 0 else float("inf")
    click.echo(f"wrote {out} in {seconds:.1f} s ({rate:,.0f} lines/s)")


SMOKE_EXAMPLES = {"max_train": 200, "max_dev": 100, "max_test": 100, "max_unlabeled": 200}
SMOKE_STEPS = 4
SMOKE_MAX_LEN = 64


def smoke_config(cfg):
    """``cfg`` cut down to check it end to end in minutes: a few hundred examples per file, a
    few steps per training stage, inputs of at most 64 tokens, and its own folder
    (``<out>/smoke``) so that it never mixes with the real run."""
    import dataclasses

    from xlt_engine.engine.experiment.runs import with_section, with_trains

    cfg = dataclasses.replace(cfg, out=str(cfg.out_root() / "smoke"))
    cfg = with_section(cfg, "data", **SMOKE_EXAMPLES)
    cfg = with_section(cfg, "model", max_len=min(cfg.model.max_len, SMOKE_MAX_LEN))
    return with_trains(cfg, max_steps=SMOKE_STEPS, log_every=1)


def _experiment(
    config_path,
    overrides,
    out,
    no_btf=False,
    fixed_threshold=None,
    voters=None,
    smoke=False,
    linear_head=False,
):
    """The config tree from the file and ``--set``, then the CLI's switches set on its fields
    (the ablation rows: -BTF, -AT, -VM; ``--smoke``)."""
    import dataclasses

    from xlt_engine.engine.experiment import ablations
    from xlt_engine.engine.experiment.config import load_config
    from xlt_engine.engine.experiment.runs import with_section

    cfg = load_config(config_path, overrides)
    if out is not None:
        cfg = dataclasses.replace(cfg, out=str(out))
    if smoke:
        cfg = smoke_config(cfg)
    what = "--out" if out is not None else "out (the run folder)"
    check_writable(cfg.run_dir(), what)
    # never inside what the run reads: the config, the model (a folder is read file by file)
    check_not_read(cfg.out_root(), what, [config_path, cfg.model.path], holds=False)
    if no_btf:
        cfg = ablations.without_btf(cfg)
    if fixed_threshold is not None:
        cfg = ablations.fixed_threshold(cfg, fixed_threshold)
    if voters is not None:
        cfg = with_section(cfg, "model", voters=voters, voter_widths=())
    if linear_head:
        cfg = ablations.linear_head(cfg)
    return cfg


OUTSIDE_LOOP = (
    "{name} received outside a training loop (evaluation, threshold, filters, reading data): "
    "every finished step is kept and the one under way is redone; continue with the same "
    "command plus --resume"
)


def os_problem(err: OSError) -> str:
    """An operating-system error as one line: the file, what happened, what to do."""
    import errno

    where = f"{err.filename}: " if err.filename else ""
    if err.errno == errno.ENOSPC:
        return (
            f"{where}no space left on device: free some (or choose another --out), then continue "
            "with --resume: every finished step and the last checkpoint are kept"
        )
    if err.errno == errno.ELOOP:
        return f"{where}too many levels of symbolic links (a link loop?): choose another path"
    return f"{where}{err.strerror or err}"


def _run_guarded(fn, repeat_resumes: bool = False) -> None:
    """Run ``fn``; an interrupt exits 130 with the resume hint, a config or data problem is a
    clean error; the process group is closed either way. Inside a training loop SIGINT/SIGTERM
    write a checkpoint first (the loop's own handlers); outside one they stop at once with the
    same hint, SIGTERM included (by default it ended the process with no word). A finished
    run names the command that repeats it (with ``--resume`` where ``repeat_resumes``: a
    command that refuses a folder it already filled); an interrupted one, or one the collapse
    guard stopped, the command that continues it. (A non-finite loss gets no such line: the
    same settings would diverge again.)"""
    import errno
    import os
    import signal
    import sys
    import threading

    from xlt_engine.engine.train import distributed
    from xlt_engine.engine.train.loop import Interrupted, NonFiniteLoss

    def on_term(signum, _frame):
        raise Interrupted(OUTSIDE_LOOP.format(name=signal.Signals(signum).name))

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    from xlt_engine.engine.method.selftrain_rows import CollapseError

    def continue_with() -> None:  # what picks the run up where it stopped
        if _resumable():
            click.echo(f"to continue: {again()}", err=True)

    try:
        fn()
    except Interrupted as err:
        click.echo(str(err), err=True)
        continue_with()
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(OUTSIDE_LOOP.format(name="SIGINT"), err=True)
        continue_with()
        sys.exit(130)
    except CollapseError as err:
        continue_with()
        _fail(err)
    except (ValueError, NonFiniteLoss) as err:
        _fail(err)
    except OSError as err:  # a full disk, a link loop, a permission: one line, what to do
        if err.errno == errno.ENOSPC:
            continue_with()
        _fail(ValueError(os_problem(err)))
    except Exception as err:  # the writers' own wrappers of a full disk (safetensors, torch.save)
        if "No space left on device" not in str(err) and "os error 28" not in str(err):
            raise
        continue_with()
        _fail(ValueError(os_problem(OSError(errno.ENOSPC, "No space left on device"))))
    else:
        if _resumable() and os.environ.get("RANK", "0") == "0":
            repeat = again(resume=repeat_resumes)
            click.echo(f"to repeat it (finished stages are reused): {repeat}")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        distributed.shutdown()


_config_option = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="a TOML experiment config (see configs/), or a stage folder's config.json (the "
    "resolved config that stage ran with)",
)
_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a config key, e.g. --set data.root=../shared/data (repeatable)",
)
_progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="progress bar (default: when stderr is a terminal)",
)


def _out_option(help: str):
    return click.option("--out", type=click.Path(path_type=Path), default=None, help=help)


@main.command()
@click.option(
    "--stage",
    required=True,
    help="the stage to run: btf, finetune, selftrain, cotrain, evaluate, predict, a stage the "
    "config's plugins register, or all: btf, finetune, selftrain, evaluate and the table (a "
    "stage's inputs come from the config and earlier stages' folders)",
)
@_config_option
@_set_option
@_out_option("run folder (default: the config's out, else runs/<config>/<src>-<tgt>)")
@click.option("--resume", is_flag=True, help="continue the stage from its latest checkpoint")
@click.option(
    "--no-btf",
    is_flag=True,
    help="ablation -BTF: fine-tune and self-train from the pretrained model",
)
@click.option("--no-selftrain", is_flag=True, help="ablation -ST (stage all): stop after finetune")
@click.option(
    "--fixed-threshold",
    type=float,
    default=None,
    metavar="A",
    help="ablation -AT: a fixed confidence threshold A instead of the automatic one",
)
@click.option("--voters", type=int, default=None, help="number of voters of the Voters Module")
@click.option(
    "--linear-head",
    is_flag=True,
    help="ablation -VM: a plain linear head (dropout + one linear layer) instead of the voters",
)
@click.option(
    "--smoke",
    is_flag=True,
    help="check the config end to end in minutes: a few hundred examples per file, "
    f"{SMOKE_STEPS} steps per training stage, into <out>/smoke",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="also write every training stage's metrics as TensorBoard events into "
    "<stage folder>/tensorboard (needs the tensorboard package)",
)
@_overwrite_option("predict.output")
@_progress_option
def run(
    stage,
    config_path,
    overrides,
    out,
    resume,
    no_btf,
    no_selftrain,
    fixed_threshold,
    voters,
    linear_head,
    smoke,
    tensorboard,
    overwrite,
    progress,
) -> None:
    """Run one stage of an experiment: xlt-engine run --stage selftrain --config configs/conll.toml

    Launch with torchrun for several processes (NCCL on CUDA, gloo on CPU); rank 0 alone writes.
    """
    import os

    if no_selftrain and stage != "all":
        _fail(ValueError("--no-selftrain goes with --stage all"))
    if overwrite:
        overrides = (*overrides, "predict.overwrite=true")
    echo = click.echo if os.environ.get("RANK", "0") == "0" else None

    def go():
        from xlt_engine.engine.experiment import registry
        from xlt_engine.engine.experiment.execute import run_stage
        from xlt_engine.engine.experiment.pipeline import Parts, run_all
        from xlt_engine.engine.experiment.runs import with_trains

        cfg = _experiment(
            config_path, overrides, out, no_btf, fixed_threshold, voters, smoke, linear_head
        )  # its plugins imported: their stages registered
        if stage != "all":
            spec = registry.get(stage)
            for path, key, overwrite_it in spec.claims(cfg) if spec.claims else ():
                # a file outside the run folder: never the config it was given
                claim_output(path, key, stage, reads=[config_path], overwrite=overwrite_it)
        if tensorboard:  # every training loop of the tree
            cfg = with_trains(cfg, tensorboard=True)
        if stage == "all":
            parts = Parts(btf=not no_btf, selftrain=not no_selftrain)
            run_all(cfg, parts=parts, resume=resume, echo=echo, progress=progress)
        else:
            run_stage(cfg, stage, resume=resume, echo=echo, progress=progress)
            if spec.then is not None:
                spec.then(cfg, resume=resume, echo=echo, progress=progress)

    _run_guarded(go)


@main.command()
@click.argument(
    "folders", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="the HTML file to write",
)
@_overwrite_option("--out file")
def report(folders, out, overwrite) -> None:
    """One self-contained HTML report (tables, training curves, threshold curves, pseudo-label
    counts, evaluations, configs) of run folders: an experiment's folder, an ablation's, or one
    pair's; several are reported one after the other."""

    def go():
        from xlt_engine.studies.report import NO_PLOTS, write_report

        path, images = write_report(list(folders), out, overwrite=overwrite)
        click.echo(f"report: {path} ({images} plots)")
        if images == 0:
            from xlt_engine.studies.report import load_pyplot

            if load_pyplot() is None:
                click.echo(NO_PLOTS)

    _run_guarded(go)


def _numbers(option: str, text: str, kind):
    """``"1, 2,3"`` -> [1, 2, 3] (``kind`` int or float), or exit naming the option."""
    try:
        return [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        name = "integers" if kind is int else "numbers"
        _fail(ValueError(f"{option}: expected comma-separated {name}, got {text!r}"))


@main.command()
@_config_option
@_set_option
@click.option(
    "--seeds",
    required=True,
    metavar="S1,S2,...",
    help="comma-separated seeds, e.g. 1,2,3 (mean ± std over them)",
)
@click.option(
    "--fixed-threshold",
    type=float,
    default=0.9,
    show_default=True,
    metavar="A",
    help="the fixed threshold of the -AT row",
)
@click.option(
    "--study",
    type=click.Choice(["ablation", "threshold", "rounds", "cotrain"]),
    default="ablation",
    show_default=True,
    help="ablation: the rows of the paper's tables 5-6; threshold: self-training at each fixed "
    "alpha of --alphas beside the automatic one; rounds: the student after every step up to "
    "--max-rounds; cotrain: paper 003's rows (fine-tune only, self-training of each view, "
    "co-training, + LA, + SA, + LA + SA, translate-train)",
)
@click.option(
    "--alphas",
    default="0.5,0.6,0.7,0.8,0.9,0.95",
    show_default=True,
    metavar="A1,A2,...",
    help="the fixed thresholds of --study threshold",
)
@click.option(
    "--max-rounds",
    type=float,
    default=3.0,
    show_default=True,
    metavar="N",
    help="rounds of --study rounds (a multiple of 0.5)",
)
@click.option(
    "--rows",
    metavar="ROW1,ROW2,...",
    help="--study ablation: only these rows (e.g. 'Ours,direct transfer'; with several sources "
    "also 'Ours (eng only)', '- ST (eng only)', 'direct transfer (eng only)'), running only "
    "the stages they need",
)
@_out_option("folder for the seeds' runs and the table (default: runs/<config>)")
@click.option("--resume", is_flag=True, help="continue stages a killed run left half-way")
@_progress_option
def ablate(
    config_path,
    overrides,
    seeds,
    fixed_threshold,
    study,
    alphas,
    max_rounds,
    rows,
    out,
    resume,
    progress,
) -> None:
    """Run the ablation rows (Ours, -AT, -VM, -BTF, -ST, direct transfer) for every seed and
    write the table (ablation.md, ablation.json) like the paper's tables 5 and 6; or, with
    --study, its threshold table (threshold-study.md, .json), rounds table (rounds-study.md,
    .json) or paper 003's rows (cotrain-ablation.md, .json). The seeds' runs share every stage
    they have in common."""
    import os

    seed_list = _numbers("--seeds", seeds, int)
    alpha_list = _numbers("--alphas", alphas, float)
    from xlt_engine.engine.method.threshold import check_alpha, check_rounds

    try:
        check_alpha(fixed_threshold, "--fixed-threshold must be")
        check_rounds(max_rounds, "--max-rounds")
    except ValueError as err:
        _fail(err)
    row_list = None if rows is None else [r.strip() for r in rows.split(",") if r.strip()]
    if row_list is not None and study != "ablation":
        _fail(ValueError(f"--rows chooses rows of --study ablation, not of --study {study}"))
    echo = click.echo if os.environ.get("RANK", "0") == "0" else None

    def go():
        from xlt_engine.studies import ablate, sweeps

        cfg = _experiment(config_path, overrides, out)
        kw = {"resume": resume, "echo": echo, "progress": progress}
        if study == "threshold":
            sweeps.run_threshold_study(cfg, seed_list, alpha_list, **kw)
        elif study == "rounds":
            sweeps.run_rounds_study(cfg, seed_list, max_rounds, **kw)
        elif study == "cotrain":
            ablate.run_cotrain_ablation(cfg, seed_list, **kw)
        else:
            ablate.run_ablate(cfg, seed_list, fixed_threshold, rows=row_list, **kw)

    _run_guarded(go)


@main.command()
@_folder_option("runs/quickstart", "folder for the generated data, the model and the runs")
@click.option(
    "--seed", default=1, show_default=True, help="seed of the generated task and of every stage"
)
@click.option("--resume", is_flag=True, help="continue a quickstart that was interrupted")
@_overwrite_option("--out folder")
@_progress_option
def quickstart(out, seed, resume, overwrite, progress) -> None:
    """The whole method on an embedded synthetic bilingual NER task, on CPU, with no download:
    btf, finetune, selftrain, evaluate, then the table (direct transfer, + BTF, + self-training).
    """
    import time

    def go():
        from xlt_engine.engine.experiment.config import load_config
        from xlt_engine.engine.experiment.pipeline import run_all
        from xlt_engine.quickstart import prepare

        start = time.perf_counter()
        check_writable(out, "--out")
        if resume and (out / "quickstart.toml").is_file():
            cfg_path = out / "quickstart.toml"
        else:
            if (out / "runs").exists() and (out / "quickstart.toml").is_file():
                raise ValueError(
                    f"{out} holds an earlier quickstart: --resume it, or choose "
                    "another folder (--out)"
                )
            claim_output(out, "--out", "quickstart", folder=True, overwrite=overwrite)
            cfg_path = prepare(out, seed)
            record_output(out, "quickstart", entries=[p.name for p in out.iterdir()])
            click.echo(f"generated the task, vocabulary and tiny model in {out} (seed {seed})")
        cfg = load_config(cfg_path, [f"seed={seed}", f"out={str(out / 'runs')!r}"])
        run_all(cfg, resume=resume, echo=click.echo, progress=progress)
        from xlt_engine.studies.report import write_report

        page, images = write_report([out / "runs"], out / "report.html", overwrite=True)
        record_output(out, "quickstart", entries=[p.name for p in out.iterdir()])
        click.echo(f"quickstart: {time.perf_counter() - start:.0f} s; tables in {out / 'runs'}")
        click.echo(f"report: {page} ({images} plots; open it in a browser)")
        if images == 0:
            from xlt_engine.studies.report import NO_PLOTS

            click.echo(NO_PLOTS)
        click.echo(  # the config it wrote names its data, model and runs folder
            f"its config: {cfg_path} (xlt-engine run --stage all --config {cfg_path} reuses "
            f"the runs in {out / 'runs'})"
        )

    _run_guarded(go, repeat_resumes=True)  # a quickstart refuses its own folder without it


if __name__ == "__main__":
    main()
