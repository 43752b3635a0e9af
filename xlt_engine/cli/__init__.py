"""Command line: a thin click layer that turns options into library calls.

Here the group and the experiment commands (``run``, ``report``, ``accept-code``, ``ablate``,
``quickstart``);
``guard`` holds their error path; ``tools`` holds ``init``, ``export``, ``inspect``, ``bench``, ``xnli-parallel`` and
``corpus``; ``options`` the options they share.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from xlt_engine import __version__
from xlt_engine.cli.guard import expected_failure, run_guarded
from xlt_engine.cli.options import fail, folder_option, overwrite_option
from xlt_engine.fileio import check_writable
from xlt_engine.outputs import check_not_read, claim_output, record_output


class _Main(click.Group):
    """The command group, keeping the arguments it was given (``again`` repeats them), and the
    one error boundary of every command: an expected failure (``expected_failure``: bad input,
    no space, no permission, a damaged file) is one line naming the path and what to do; any
    other exception is a bug and keeps its traceback. ``--debug`` (or ``XLT_ENGINE_DEBUG=1``)
    shows the traceback of every error."""

    def parse_args(self, ctx, args):
        ctx.meta["xlt_engine.argv"] = list(args)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta["xlt_engine.command"] = cmd  # for the boundary, once its context has closed
        return name, cmd, rest

    def invoke(self, ctx):
        import os
        import warnings

        debug = ctx.params.get("debug") or os.environ.get("XLT_ENGINE_DEBUG") == "1"
        if not debug:  # a warning is one line on stderr, not the source line that raised it
            warnings.formatwarning = lambda msg, cat, *_a, **_k: f"warning: {msg}\n"
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            line = None if debug else expected_failure(err)
            if line is None:
                raise
            raise click.ClickException(line) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xlt-engine")
@click.option(
    "--debug", is_flag=True, help="show the traceback of every error (also XLT_ENGINE_DEBUG=1)"
)
def main(debug: bool) -> None:
    """xlt-engine: zero-shot cross-lingual transfer without parallel data."""
    if "XLT_ENGINE_JOB_PARENT" in os.environ:  # a job of ablate --jobs: it dies with its parent
        from xlt_engine.studies.jobs import follow_parent

        follow_parent()


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
@overwrite_option("predict.output")
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
        fail(ValueError("--no-selftrain goes with --stage all"))
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

    run_guarded(go)


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
@overwrite_option("--out file")
def report(folders, out, overwrite) -> None:
    """One self-contained HTML report (tables, training curves, threshold curves, pseudo-label
    counts, evaluations, configs) of run folders: an experiment's folder, an ablation's, or one
    pair's; several are reported one after the other."""

    def go():
        from xlt_engine.studies.figures import NO_PLOTS
        from xlt_engine.studies.report import write_report

        path, images = write_report(list(folders), out, overwrite=overwrite)
        click.echo(f"report: {path} ({images} plots)")
        if images == 0:
            from xlt_engine.studies.figures import load_pyplot

            if load_pyplot() is None:
                click.echo(NO_PLOTS)

    run_guarded(go)


@main.command("accept-code")
@click.argument(
    "folders",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--dry-run", is_flag=True, help="say what would be accepted; write nothing")
def accept_code(folders, dry_run) -> None:
    """Keep the results of stage folders across a code change you judge harmless: their
    fingerprints are rewritten as if the current code had made them (the code each records,
    the upstream digests it holds), the old digest kept in their ``accepted`` list. Settings,
    inputs and results are not touched; the next run still checks those."""

    def go():
        from xlt_engine.engine.experiment.accept import accept_code as accept

        for folder in folders:
            accept(folder, echo=click.echo, dry_run=dry_run)

    run_guarded(go)


def _numbers(option: str, text: str, kind):
    """``"1, 2,3"`` -> [1, 2, 3] (``kind`` int or float), or exit naming the option."""
    try:
        return [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        name = "integers" if kind is int else "numbers"
        fail(ValueError(f"{option}: expected comma-separated {name}, got {text!r}"))


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
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="--study ablation: run N rows and seeds at once, each in its own process (one GPU "
    "each, or the CPU cores divided among them), a row after the one that makes the stages it "
    "reads; then write the table",
)
@click.option(
    "--plan",
    is_flag=True,
    help="--study ablation: print the jobs --jobs would run (one command per row and seed, with "
    "the jobs each comes after, then the table's command) for a scheduler; run nothing",
)
@click.option("--no-table", is_flag=True, hidden=True, help="one job of --jobs: no table")
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
    jobs,
    plan,
    no_table,
    progress,
) -> None:
    """Run the ablation rows (Ours, -AT, -VM, -BTF, -ST, direct transfer, soft only) for every
    seed and write the table (ablation.md, ablation.json) like the paper's tables 5 and 6; or, with
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
        fail(err)
    row_list = None if rows is None else [r.strip() for r in rows.split(",") if r.strip()]
    if row_list is not None and study != "ablation":
        fail(ValueError(f"--rows chooses rows of --study ablation, not of --study {study}"))
    echo = click.echo if os.environ.get("RANK", "0") == "0" else None
    if (jobs > 1 or plan) and (study != "ablation" or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        why = f"--study {study}" if study != "ablation" else "torchrun (it spreads one run)"
        flag = "--plan" if plan else "--jobs"
        fail(ValueError(f"{flag} spreads the rows and seeds of --study ablation, not {why}"))

    # at least as many seeds as processes: a job per seed (its rows share round 1's soft step);
    # fewer: a job per row and seed; --plan: a job per row and seed, for the user's scheduler
    whole = not plan and jobs <= len(seed_list)

    def spread_out(cfg):  # the jobs of --jobs and --plan, and the arguments they share
        from xlt_engine.studies import ablate
        from xlt_engine.studies import jobs as spread

        work = ablate.row_jobs(cfg, seed_list, fixed_threshold, row_list, whole_seeds=whole)
        return work, spread.ablate_args(config_path, overrides, fixed_threshold, out, resume)

    if plan:  # printed, nothing run (errors: the CLI boundary's one line)
        from xlt_engine.studies.jobs import plan_lines

        work, args = spread_out(_experiment(config_path, overrides, out))
        click.echo("\n".join(plan_lines(["xlt-engine"], args, work, seed_list, rows)))
        return

    def go():
        from xlt_engine.studies import ablate, sweeps
        from xlt_engine.studies import jobs as spread

        cfg = _experiment(config_path, overrides, out)
        kw = {"resume": resume, "echo": echo, "progress": progress}
        work, args = spread_out(cfg) if jobs > 1 else ([], [])
        if len(work) > 1:  # the rows and seeds side by side; below, the table
            spread.run_or_say(args, work, jobs, click.echo, cfg, whole)
        if study == "threshold":
            sweeps.run_threshold_study(cfg, seed_list, alpha_list, **kw)
        elif study == "rounds":
            sweeps.run_rounds_study(cfg, seed_list, max_rounds, **kw)
        elif study == "cotrain":
            ablate.run_cotrain_ablation(cfg, seed_list, **kw)
        else:
            ablate.run_ablate(
                cfg, seed_list, fixed_threshold, rows=row_list, table=not no_table, **kw
            )

    run_guarded(go)


@main.command()
@folder_option("runs/quickstart", "folder for the generated data, the model and the runs")
@click.option(
    "--seed", default=1, show_default=True, help="seed of the generated task and of every stage"
)
@click.option("--resume", is_flag=True, help="continue a quickstart that was interrupted")
@overwrite_option("--out folder")
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

        page, images = write_report([out / "runs"], out / "report.html", overwrite=overwrite)
        record_output(out, "quickstart", entries=[p.name for p in out.iterdir()])
        click.echo(f"quickstart: {time.perf_counter() - start:.0f} s; tables in {out / 'runs'}")
        click.echo(f"report: {page} ({images} plots; open it in a browser)")
        if images == 0:
            from xlt_engine.studies.figures import NO_PLOTS

            click.echo(NO_PLOTS)
        click.echo(  # the config it wrote names its data, model and runs folder
            f"its config: {cfg_path} (xlt-engine run --stage all --config {cfg_path} reuses "
            f"the runs in {out / 'runs'})"
        )

    run_guarded(go, repeat_resumes=True)  # a quickstart refuses its own folder without it


from xlt_engine.cli import tools  # noqa: E402  (its commands join the group defined above)

for _command in tools.COMMANDS:
    main.add_command(_command)
