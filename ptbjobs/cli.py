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


def _help(text: str) -> str:
    """Help text with square brackets kept: typer's rich help would read them as markup."""
    return text.replace("[", "\\[")


def _metavar(field: str) -> str:
    kind = field_type(field)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "|".join(member.value for member in kind)
    return {int: "INT", float: "FLOAT"}.get(kind, "TEXT")


# ---- train: one flag per TrainConfig field ----

def _train(config: Optional[Path], out: Optional[Path], data_dir: Optional[Path], **flags: Any) -> None:
    from ptbjobs.config import TrainConfig
    from ptbjobs.progress import make_reporter
    from ptbjobs.runner import run_training

    values: dict[str, Any] = {}
    if config is not None:
        values = load_config_file(config)
        try:
            TrainConfig.from_mapping(values)
        except ConfigError as exc:
            raise ConfigError(None, f"{config}: key {exc.field!r}: {exc.message}", exc.hint) from None
    given = {name: value for name, value in flags.items() if value is not None}
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
        is_bool = field_type(name) is bool
        names = f"{flag(name)}/--no-{name.replace('_', '-')}" if is_bool else flag(name)
        option = typer.Option(None, names, help=_help(f"{help_text} [default: {FIELD_DEFAULTS[name]}]"),
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
