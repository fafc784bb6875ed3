"""The `ptbjobs` command line: wiring only. Every command parses its flags, calls one library
function, and prints the result; errors the user can fix come back as one line and a non-zero
exit code (a traceback only with PTBJOBS_DEBUG=1)."""

from __future__ import annotations

import enum
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ptbjobs.config import FIELD_DEFAULTS, FIELD_HELP, ConfigError, coerce, field_type, load_config_file
from ptbjobs.errors import PtbjobsError

app = typer.Typer(help="Zaremba-small LSTM/GRU language-model sweeps on Penn Treebank, locally or on Slurm.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Get and check the Penn Treebank files.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DATA_DIR_HELP = "folder with ptb.{train,valid,test}.txt \\[default: $PTBJOBS_DATA, else the per-user cache]"


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def no_flag(field: str) -> str:
    """The flag that turns a boolean field off: --no-tie-weights."""
    return "--no-" + field.replace("_", "-")


def _help(text: str) -> str:
    """Help text with square brackets kept: typer's rich help would read them as markup."""
    return text.replace("[", "\\[")


def _metavar(field: str) -> str:
    kind = field_type(field)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "|".join(member.value for member in kind)
    return {int: "INT", float: "FLOAT"}.get(kind, "TEXT")


# ---- train: one flag per TrainConfig field ----

NO_PREFIX = "no_"  # the parameter behind a boolean field's --no-x flag

def _train(config: Optional[Path], out: Optional[Path], data_dir: Optional[Path], **flags: Any) -> None:
    from ptbjobs.config import TrainConfig
    from ptbjobs.progress import make_reporter
    from ptbjobs.runner import run_training

    # the file and the flags are checked together, once merged: a flag may fix a value in the file
    values: dict[str, Any] = load_config_file(config) if config is not None else {}
    given = {name: value for name, value in flags.items() if value is not None and not name.startswith(NO_PREFIX)}
    for negated, value in flags.items():
        if negated.startswith(NO_PREFIX) and value:
            name = negated[len(NO_PREFIX):]
            if given.get(name):
                raise ConfigError(None, f"{flag(name)} and {no_flag(name)} contradict each other", "give one of them")
            given[name] = False
    for name, value in given.items():
        try:
            values[name] = coerce(name, value)
        except ConfigError as exc:
            raise ConfigError(None, f"{flag(name)}: {exc.message}", exc.hint) from None
    try:
        train_config = TrainConfig.from_mapping(values)
    except ConfigError as exc:
        where = flag(exc.field) if exc.field in given else f"{config}: key {exc.field!r}"
        raise ConfigError(None, f"{where}: {exc.message}", exc.hint) from None
    if out is None:
        out = Path("runs") / f"{train_config.cell.value}-d{train_config.dropout:g}-s{train_config.seed}"
    run_training(train_config, out, data_dir, reporter=make_reporter())


def _train_signature() -> inspect.Signature:
    params = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--config", help="JSON or TOML file of training fields; flags override it")),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--out", help=_help("run folder [default: runs/CELL-dDROPOUT-sSEED]"))),
        inspect.Parameter("data_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--data-dir", help=DATA_DIR_HELP)),
    ]
    for name, help_text in FIELD_HELP.items():
        assert not name.startswith(NO_PREFIX), f"{name}: the prefix {NO_PREFIX!r} is kept for the --no-x flags"
        is_bool = field_type(name) is bool
        default = FIELD_DEFAULTS[name]
        if is_bool:
            # --x and --no-x are two options, the second named in the first's help and hidden: as a
            # pair they would take a column of their own, which at 80 columns truncates both
            negative = no_flag(name)
            help_text += f" [default: {'on; ' + negative + ' turns it off' if default else 'off; ' + negative + ' overrides a --config'}]"
            params.append(inspect.Parameter(NO_PREFIX + name, inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                            default=typer.Option(False, negative, hidden=True)))
        else:
            help_text += f" [default: {default}]"
        option = typer.Option(None, flag(name), help=_help(help_text),
                              metavar=None if is_bool else _metavar(name), show_default=False,
                              rich_help_panel="Training config")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[bool] if is_bool else Optional[str]))
    return inspect.Signature(params)


def train(**kwargs: Any) -> None:
    """Train one run to the end; the same command on the same --out resumes it."""
    _train(**kwargs)


train.__signature__ = _train_signature()
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}
app.command(help=train.__doc__)(train)


# ---- eval, bench ----

@app.command("eval")
def eval_command(
    target: Path = typer.Argument(..., help="a run folder (its best.pt) or a weights file"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Validation and test perplexity of saved weights."""
    from ptbjobs.evaluate import evaluate_saved

    result = evaluate_saved(target, data_dir, device)
    if as_json:
        print(json.dumps(result))
    else:
        print(f"{result['weights']} (epoch {result['epoch']}): valid ppl {result['valid']:.2f}, test ppl {result['test']:.2f}")


@app.command()
def bench(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    cell: str = typer.Option("lstm", "--cell", help="lstm or gru"),
    steps: int = typer.Option(100, "--steps", min=1, help="training steps per timed round"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="timed rounds of each loop (the median is shown)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Tokens/s of the ptbjobs training step vs a plain PyTorch reference loop, same model and data."""
    from ptbjobs.bench import format_result, run_bench
    from ptbjobs.config import TrainConfig

    try:
        config = TrainConfig.from_mapping({"device": device, "cell": cell})
    except ConfigError as exc:
        raise ConfigError(None, f"{flag(exc.field)}: {exc.message}") from None
    result = run_bench(config, data_dir, steps=steps, rounds=rounds)
    print(json.dumps(result.to_dict()) if as_json else format_result(result))


# ---- sweeps ----

SWEEP_DIR_HELP = _help("the sweep folder [default: the newest sweep under ./runs]")


@app.command()
def submit(
    grid: Path = typer.Option(..., "--grid", help="the grid file (TOML)"),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=_help("sweep folder [default: runs/NAME]")),
    executor: str = typer.Option("auto", "--executor", help="auto (the sweep's own, else Slurm if sbatch is on PATH, else local), local or slurm"),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", min=1, help=_help("local executor: runs at once, kept by the sweep [default: the sweep's, else runs_per_gpu per GPU, else cores / cpus_per_task (2 if unset)]")),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, submit nothing"),
    wait: bool = typer.Option(False, "--wait", help="show live status until every run has ended; exit 1 if any did not complete"),
    force: bool = typer.Option(False, "--force", help="restart runs whose config changed (their old folders are set aside)"),
    yes: bool = typer.Option(False, "--yes", help="allow a grid of more than 10,000 runs"),
    only: Optional[list[str]] = typer.Option(None, "--only", help=_help("submit only the runs with this setting, KEY=VALUE (repeatable: a key given twice matches either value) [default: every run]")),
) -> None:
    """Submit every run of a grid that is not done or in progress; returns at once."""
    from ptbjobs import launch
    from ptbjobs.grid import load_grid, select_runs
    from ptbjobs.sweep import Sweep

    parsed = load_grid(grid, allow_large=yes)
    in_grid = len(parsed.runs)
    if only:
        parsed = select_runs(parsed, only)
    sweep = Sweep(sweep_dir or Path("runs") / parsed.name)
    if sweep.path.exists() and not sweep.path.is_dir():
        raise ConfigError(None, f"--sweep-dir {sweep.path} is a file, not a folder", "give a folder path")
    chosen = launch.get_executor(executor, max_parallel, sweep=sweep)
    planned = launch.submit(parsed, sweep, chosen, data_dir=data_dir, force=force, dry_run=dry_run)
    console = _console()
    starting = sum(1 for p in planned if p.action in (launch.SUBMIT, launch.RESUME, launch.RESTART))
    verb = "would submit" if dry_run else "submitted"
    selected = f" (--only: {len(planned)} of the grid's {in_grid})" if only else ""
    console.print(f"{verb} {starting} of {len(planned)} runs{selected} -> {sweep.path} ({_executor_note(chosen)})")
    console.print(_plan_table(planned) if dry_run or len(planned) <= PLAN_ROWS_SHOWN else _plan_summary(planned))
    if wait and not dry_run:
        raise typer.Exit(_watch(sweep, until_done=True))


def _console():
    """A terminal gets tables at its own width; a pipe or file gets them whole, not squeezed to 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


PLAN_ROWS_SHOWN = 50  # a bigger plan is summarised: a row per run says little at 1,000 runs


def _executor_note(executor) -> str:
    """"local, 2 at once" once the local executor has submitted; else the executor's name."""
    parallel = getattr(executor, "parallel_in_force", None)
    return f"{executor.name}, {parallel} at once" if parallel else executor.name


def _plan_summary(planned) -> str:
    from collections import Counter

    counts = Counter(p.action for p in planned)
    return "plan: " + ", ".join(f"{n} {action}" for action, n in counts.most_common()) + \
        "  (ptbjobs submit --dry-run lists them; ptbjobs status shows each run)"


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
) -> None:
    """One row per run: state, epoch, perplexities, elapsed time and ETA."""
    from ptbjobs import status as status_module
    from ptbjobs.sweep import find_sweep

    sweep = find_sweep(sweep_dir)
    if watch:
        raise typer.Exit(_watch(sweep, until_done=False))
    collected = status_module.collect(sweep)
    if as_json:
        print(json.dumps(collected))
        return
    console = _console()
    console.print(status_module.render_table(collected), end="", no_wrap=True, overflow="ignore", crop=False)
    console.print(status_module.summary_line(collected))


def _watch(sweep, until_done: bool) -> int:
    """Live status table; with until_done, return 0 when all runs completed, 1 if any did not."""
    import time

    from rich.console import Group
    from rich.live import Live

    from ptbjobs import states
    from ptbjobs import status as status_module

    def view():
        collected = status_module.collect(sweep)
        return collected, Group(status_module.render_table(collected), status_module.summary_line(collected))

    collected, renderable = view()
    with Live(renderable, refresh_per_second=1, console=_console()) as live:
        while not until_done or not all(states.is_finished(r["state"]) for r in collected["runs"]):
            time.sleep(2)
            collected, renderable = view()
            live.update(renderable)
    return 0 if all(r["state"] == states.COMPLETED for r in collected["runs"]) else 1


@app.command()
def cancel(
    run: list[str] = typer.Option([], "--run", help=_help("run key (repeatable) [default: every queued or running run]")),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
) -> None:
    """Cancel queued or running jobs; a running one saves its state first."""
    from ptbjobs import launch
    from ptbjobs.sweep import find_sweep

    cancelled = launch.cancel(find_sweep(sweep_dir), run or None)
    print(f"cancelled {len(cancelled)} run(s)" + (f": {', '.join(cancelled)}" if cancelled else ""))


@app.command()
def retry(
    run: list[str] = typer.Option([], "--run", help=_help("run key (repeatable) [default: every run that can be retried]")),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", min=1, help=_help("local executor: runs at once, kept by the sweep [default: the sweep's]")),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
) -> None:
    """Resubmit runs that FAILED, TIMEOUT, CANCELLED, ...; they resume from their checkpoints."""
    from ptbjobs import launch
    from ptbjobs.sweep import find_sweep, latest_job

    sweep = find_sweep(sweep_dir)
    submitted = launch.retry(sweep, keys=run or None, max_parallel=max_parallel)
    if not submitted:
        print("nothing to retry: no run has failed, timed out or been cancelled")
    for key, job_id in submitted.items():
        print(f"{key}: resubmitted as job {job_id}")
    runs = sweep.read_manifest()["runs"]
    from ptbjobs.local import parallel_in_force

    in_force = parallel_in_force(sweep)
    if in_force and (max_parallel or any(latest_job(runs[key])["executor"] == "local" for key in submitted)):
        print(f"local executor: {in_force} at once")


@app.command()
def logs(
    run: str = typer.Argument(..., help="run key (see `ptbjobs status`)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing the latest attempt's log as it grows"),
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
) -> None:
    """The run's output, every attempt in order."""
    from ptbjobs import launch
    from ptbjobs.sweep import find_sweep

    sweep = find_sweep(sweep_dir)
    manifest = sweep.read_manifest()
    if run not in manifest["runs"]:
        raise ConfigError(None, f"no run {run!r} in {sweep.path}", "see `ptbjobs status` for the keys")
    paths = []
    for job in manifest["runs"][run]["jobs"]:
        # an attempt may have more than one file (a packed run: its own log, then its task's)
        paths = launch.get_executor(job["executor"], submitting=False).log_paths(sweep, run, [job["job_id"]])
        for path in paths:
            print(f"==> attempt {job['job_id']} ({job['executor']}): {path}")
            print(path.read_text() if path.exists() else "(no output yet)", end="")
    if follow and paths:
        _follow(paths[0], lambda: _run_active(sweep, run))


def _run_active(sweep, key: str) -> bool:
    from ptbjobs import launch, states

    return states.is_active(launch.run_states(sweep, sweep.read_manifest())[key])


def _follow(path: Path, active) -> None:
    import time

    position = path.stat().st_size if path.exists() else 0
    while True:
        if path.exists():
            with open(path) as handle:
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
            print(chunk, end="", flush=True)
        if not active():
            return
        time.sleep(1)


REFERENCES_FILE = Path(__file__).resolve().parent.parent / "analysis" / "references.csv"


@app.command()
def report(
    sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", help=SWEEP_DIR_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help=_help("folder for results.* and figures/ [default: the sweep folder]")),
    include_incomplete: bool = typer.Option(False, "--include-incomplete", help="count runs that have not finished"),
    per_run: bool = typer.Option(False, "--per-run", help="add a table of every run to results.md"),
    references: bool = typer.Option(False, "--references", help="add published 2 x 200 results (analysis/references.csv)"),
    references_file: Optional[Path] = typer.Option(None, "--references-file", help="another CSV of references (implies --references)"),
) -> None:
    """The results table and convergence figures of a sweep: results.md/.csv/.tex/.json, figures/."""
    from ptbjobs import report as report_module
    from ptbjobs.sweep import find_sweep

    chosen = references_file or (REFERENCES_FILE if references else None)
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(None, f"--out {out} is a file, not a folder", "give a folder path")
    made = report_module.make_report(find_sweep(sweep_dir), out, include_incomplete, per_run, chosen)
    console = _console()
    console.print(report_module.terminal_table(made))
    if made.incomplete:
        shown = "included" if include_incomplete else "left out (--include-incomplete to count them)"
        console.print(f"incomplete runs, {shown}: {', '.join(made.incomplete)}")
    for path in made.files:
        print(path)


# ---- data ----

@data_app.command("download")
def data_download(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    mirror: list[str] = typer.Option([], "--mirror", help="another source to try first: a URL prefix of the three files, or a .tgz"),
) -> None:
    """Fetch ptb.{train,valid,test}.txt, verify their sha256, write them atomically."""
    from ptbjobs.data import resolve_data_dir
    from ptbjobs.download import DEFAULT_SOURCES, download

    folder = resolve_data_dir(data_dir)
    written = download(folder, tuple(mirror) + DEFAULT_SOURCES, log=lambda line: print(line, file=sys.stderr))
    print(f"{folder}: {'all three files verified' if not written else f'{len(written)} file(s) downloaded and verified'}")


@data_app.command("verify")
def data_verify(data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP)) -> None:
    """Check that the folder holds the canonical PTB files (sha256)."""
    from ptbjobs.data import missing_data_hint, resolve_data_dir
    from ptbjobs.download import verify_folder

    folder = resolve_data_dir(data_dir)
    checks = verify_folder(folder)
    for check in checks:
        print(f"{check.path}: {'ok' if check.ok else check.problem}")
    bad = [check for check in checks if not check.ok]
    if bad:
        raise PtbjobsError(f"{len(bad)} of 3 PTB files in {folder} are missing or not canonical",
                           missing_data_hint(folder))


# ---- entry point ----

def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. Errors print one line: `ptbjobs: error: ...`."""
    debug = os.environ.get("PTBJOBS_DEBUG") == "1"
    logging.basicConfig(format="ptbjobs: %(levelname)s: %(message)s", level=logging.DEBUG if debug else logging.WARNING)
    try:
        app(args=argv, prog_name="ptbjobs", standalone_mode=False)
    except PtbjobsError as exc:
        if debug:
            raise
        print(f"ptbjobs: {'error: ' if exc.is_error else ''}{exc}", file=sys.stderr)
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, bad int
        if debug:
            raise
        if exc.format_message():  # empty when a bare command group has just printed its help
            print(f"ptbjobs: error: {exc.format_message()} (see --help)", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("ptbjobs: aborted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())
