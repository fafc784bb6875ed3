"""The commands about a sweep: submit, status, cancel, retry, logs, report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ptbjobs.cli.common import DATA_DIR_HELP, SWEEP_DIR_HELP, app, console
from ptbjobs.cli.config_flags import escape_help

PLAN_ROWS_SHOWN = 50  # a bigger plan is summarised: a row per run says little at 1,000 runs


@app.command()
def submit(
    grid: Path = typer.Option(..., "--grid", help="the grid file (TOML)"),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=escape_help("sweep folder [default: runs/NAME]")),
    executor: str = typer.Option("auto", "--executor", help="auto (the sweep's own, else Slurm if sbatch is on PATH, else local), local or slurm"),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", min=1, help=escape_help("local executor: runs at once (a fused pack counts as one), kept by the sweep [default: the sweep's, else runs_per_gpu per GPU (with fuse: 1), else cores / cpus_per_task (2 if unset)]")),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, submit nothing"),
    wait: bool = typer.Option(False, "--wait", help="show live status until every run has ended; exit 1 if any did not complete"),
    force: bool = typer.Option(False, "--force", help="restart runs whose config changed (their old folders are set aside)"),
    yes: bool = typer.Option(False, "--yes", help="allow a grid of more than 10,000 runs"),
    only: Optional[list[str]] = typer.Option(None, "--only", help=escape_help("submit only the runs with this setting, KEY=VALUE (repeatable: a key given twice matches either value) [default: every run]")),
) -> None:
    """Submit every run of a grid that is not done or in progress; returns at once."""
    from ptbjobs.launch.status import watch
    from ptbjobs.launch.submit import submit_grid

    done = submit_grid(grid, sweep_dir, executor, max_parallel, data_dir, dry_run=dry_run, force=force,
                       allow_large=yes, only=only)
    out = console()
    verb = "would submit" if dry_run else "submitted"
    selected = f" (--only: {len(done.planned)} of the grid's {done.grid_runs})" if only else ""
    parallel = done.executor.parallel_in_force
    where = f"{done.executor.name}, {parallel} at once" if parallel else done.executor.name
    out.print(f"{verb} {done.starting} of {len(done.planned)} runs{selected} -> {done.sweep.path} ({where})")
    if len(done.planned) <= PLAN_ROWS_SHOWN:
        out.print(_plan_table(done.planned))
    elif dry_run:  # every run, as plain lines: a rich table of 100,000 rows takes minutes
        sys.stdout.write(_plan_lines(done.planned))
        out.print(_plan_summary(done.planned))
    else:
        out.print(_plan_summary(done.planned))
    if done.waiting:
        out.print(f"{done.waiting} runs wait in the sweep (QUEUED_LOCALLY): the cluster's limit on queued jobs is "
                  "reached; they go out as earlier ones end (under a limit of 1 job, only as `ptbjobs status` "
                  "or `submit --wait` finds room)")
    if wait and not dry_run:
        raise typer.Exit(watch(done.sweep, console(), until_done=True, feeding=True))


def _plan_summary(planned) -> str:
    from collections import Counter

    counts = Counter(p.action for p in planned)
    return "plan: " + ", ".join(f"{n} {action}" for action, n in counts.most_common()) + \
        "  (ptbjobs submit --dry-run lists them; ptbjobs status shows each run)"


def _plan_lines(planned) -> str:
    rows = [("run", "state before", "action")] + [(p.spec.key, p.state, p.action) for p in planned]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "".join(f"{key.ljust(widths[0])}  {state.ljust(widths[1])}  {action}\n" for key, state, action in rows)


def _plan_table(planned):
    from rich.table import Table

    table = Table()
    for column in ("run", "state before", "action"):
        table.add_column(column)
    for item in planned:
        table.add_row(item.spec.key, item.state, item.action)
    return table


@app.command()
def status(
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="print JSON (schema: see the README)"),
    watch: bool = typer.Option(False, "--watch", help="refresh every 2 s until Ctrl-C"),
    every_run: bool = typer.Option(False, "--all", help="list every run (above 1,000 runs only those not completed are listed)"),  # status.FULL_TABLE_RUNS
) -> None:
    """One row per run: state, epoch, perplexities, elapsed time and ETA."""
    from ptbjobs.launch import status as sweep_status
    from ptbjobs.sweep.folder import find_sweep

    sweep = find_sweep(sweep_dir)
    if watch:
        raise typer.Exit(sweep_status.watch(sweep, console(), until_done=False))
    collected = sweep_status.collect(sweep)
    if as_json:
        print(sweep_status.status_json(collected))
        return
    if not sys.stdout.isatty():  # a pipe or a file: plain lines, without loading rich (a 100,000-line table in a second)
        sys.stdout.write(sweep_status.plain_table(collected, every_run) + sweep_status.summary_line(collected, every_run) + "\n")
        return
    out = console()
    out.print(sweep_status.render_table(collected, every_run), end="", no_wrap=True, overflow="ignore", crop=False)
    out.print(sweep_status.summary_line(collected, every_run), no_wrap=True, overflow="ignore", crop=False)


@app.command()
def cancel(
    run: list[str] = typer.Option([], "--run", help=escape_help("run key (repeatable) [default: every queued or running run]")),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
) -> None:
    """Cancel queued or running jobs; a running one saves its state first."""
    from ptbjobs.launch.cancel import cancel as cancel_runs
    from ptbjobs.sweep.folder import find_sweep

    cancelled = cancel_runs(find_sweep(sweep_dir), run or None)
    shown = ", ".join(cancelled[:10]) + (f" and {len(cancelled) - 10} more (ptbjobs status lists them)" if len(cancelled) > 10 else "")
    print(f"cancelled {len(cancelled)} run(s)" + (f": {shown}" if cancelled else ""))


@app.command()
def retry(
    run: list[str] = typer.Option([], "--run", help=escape_help("run key (repeatable) [default: every run that can be retried]")),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", min=1, help=escape_help("local executor: runs at once, kept by the sweep [default: the sweep's]")),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
) -> None:
    """Resubmit runs that FAILED, TIMEOUT, CANCELLED, ...; they resume from their checkpoints."""
    from ptbjobs.launch.submit import retry as retry_runs
    from ptbjobs.sweep.folder import find_sweep

    retried = retry_runs(find_sweep(sweep_dir), keys=run or None, max_parallel=max_parallel)
    for key, state in retried.held.items():
        print(f"{key}: not retried: accounting says its job ended, but Slurm still holds it ({state}); "
              "retry it once it has gone from squeue")
    if not retried.submitted and not retried.held:
        print("nothing to retry: no run has failed, timed out or been cancelled")
    resubmitted = list(retried.submitted.items())
    for key, job_id in resubmitted if len(resubmitted) <= 20 else resubmitted[:10]:  # not 100,000 lines
        print(f"{key}: resubmitted as job {job_id}")
    if len(resubmitted) > 20:
        print(f"and {len(resubmitted) - 10} more runs resubmitted (ptbjobs status shows their jobs)")
    if retried.waiting:
        print(f"{len(retried.waiting)} runs wait in the sweep for room on the cluster (QUEUED_LOCALLY): "
              "they go out as earlier ones end")
    if retried.local_parallel:
        print(f"local executor: {retried.local_parallel} at once")


@app.command(hidden=True)
def feed(
    sweep_dir: Path = typer.Option(..., "--sweep-dir", help="the sweep folder"),
    as_feeder: bool = typer.Option(False, "--as-feeder", help="the sweep's feeder job: requeue itself while runs still wait"),
) -> None:
    """Send the sweep's runs that wait for room on the cluster, as many as fit now (each Slurm task runs this as it ends)."""
    import os

    from ptbjobs.launch.feed import feed as feed_sweep
    from ptbjobs.sweep.folder import find_sweep

    own_job = os.environ.get("SLURM_JOB_ID")
    for name in [n for n in os.environ if n.startswith(("SLURM_", "SBATCH_"))]:
        # run inside a job (the feeder, an ending task): the jobs it submits must not inherit its
        # allocation (its --mem and the partition's memory per CPU together make srun refuse them)
        del os.environ[name]
    sent, left = feed_sweep(find_sweep(sweep_dir))
    if sent or left:
        print(f"ptbjobs feed: sent {len(sent)} waiting run(s)" + (f" ({', '.join(sent)})" if len(sent) <= 10 else "")
              + f"; {left} still wait", flush=True)
    if as_feeder and left and own_job:
        from ptbjobs.executors import slurm_commands

        slurm_commands.requeue(own_job)  # back in the queue, to look again
        print("ptbjobs feed: requeued to look again", flush=True)


@app.command()
def logs(
    run: str = typer.Argument(..., help="run key (see `ptbjobs status`)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing the latest attempt's log as it grows"),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
) -> None:
    """The run's output, every attempt in order."""
    from ptbjobs.launch import logs as run_logs
    from ptbjobs.sweep.folder import find_sweep

    sweep = find_sweep(sweep_dir)
    attempts = run_logs.attempt_logs(sweep, run)
    for attempt in attempts:
        sections = run_logs.log_sections(attempt)
        if not sections:
            print(f"==> attempt {attempt.job_id} ({attempt.executor}): {attempt.path}\n(no output yet)")
        for number, text in enumerate(sections, 1):
            start = f", start {number} of {len(sections)}" if len(sections) > 1 else ""
            print(f"==> attempt {attempt.job_id} ({attempt.executor}){start}: {attempt.path}")
            print(text, end="")
    latest = run_logs.latest_attempt_paths(attempts)
    if follow and latest:
        for chunk in run_logs.follow(latest[0], lambda: run_logs.run_is_active(sweep, run)):
            print(chunk, end="", flush=True)


@app.command()
def report(
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help=escape_help("folder for results.* and figures/ [default: the sweep folder]")),
    include_incomplete: bool = typer.Option(False, "--include-incomplete", help="count runs that have not finished"),
    per_run: bool = typer.Option(False, "--per-run", help="add a table of every run to results.md"),
    references: bool = typer.Option(False, "--references", help="add published 2 x 200 results (shipped with ptbjobs: ptbjobs/analysis/references.csv)"),
    # a str, not a Path: an error names the file exactly as given (Path would turn ./refs.csv into refs.csv)
    references_file: Optional[str] = typer.Option(None, "--references-file", metavar="<path>", help="another CSV of references (implies --references)"),
) -> None:
    """The results table and convergence figures of a sweep: results.md/.csv/.tex/.json, figures/."""
    from ptbjobs.analysis.report import diverged_list, make_report, terminal_table
    from ptbjobs.sweep.folder import find_sweep

    chosen = references_file if references_file is not None else references  # a file, or True: the shipped ones
    made = make_report(find_sweep(sweep_dir), out, include_incomplete, per_run, chosen)
    shown = console()
    shown.print(terminal_table(made))
    if made.incomplete:
        counted = "included" if include_incomplete else "left out (--include-incomplete to count them)"
        shown.print(f"incomplete runs, {counted}: {', '.join(made.incomplete)}")
    if made.diverged:
        counted = "included up to their last good epoch" if include_incomplete else \
            "left out (--include-incomplete to count them)"
        print(f"diverged runs, {counted}: {diverged_list(made)}")
    for key, problem in made.damaged.items():
        print(f"damaged run, left out: {key}: {problem}")
    if made.search is not None:
        found = made.search
        for _, best in found.best.iterrows():
            print(f"search, {best['group']}: best {best['key']} (valid {best['min_valid_ppl']:.2f}"
                  + ("" if best["complete"] else ", not finished") + ")")
        print(f"search compute: {found.used_hours:.3g} {found.device}-hours, {100 * found.ratio:.0f}% of the full grid's "
              f"{found.full_hours:.3g} (search.md)")
    for path in made.files:
        print(path)
