"""`ptbjobs train`'s flags, one per TrainConfig field, made from the dataclass itself.

typer builds a command's options from its function's signature, so a flag per config field means
a signature with a parameter per field. `with_config_flags` gives a command exactly that: its own
parameters plus the generated ones, and hands the generated flags' values to the command as one
mapping, `flags` (field -> the string or bool typed; None where the flag was not given). Adding a
field to TrainConfig adds its flag, help text and default with no change here.
"""

from __future__ import annotations

import enum
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ptbjobs.core.errors import ConfigError
from ptbjobs.train.config import FIELD_DEFAULTS, FIELD_HELP, TrainConfig, coerce, field_type, load_config_file

NO_PREFIX = "no_"  # the parameter behind a boolean field's --no-x flag
PANEL = "Training config"


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def no_flag(field: str) -> str:
    """The flag that turns a boolean field off: --no-tie-weights."""
    return "--no-" + field.replace("_", "-")


def escape_help(text: str) -> str:
    """Help text with square brackets kept: typer's rich help would read them as markup."""
    return text.replace("[", "\\[")


def _metavar(field: str) -> str:
    kind = field_type(field)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "|".join(member.value for member in kind)
    return {int: "INT", float: "FLOAT"}.get(kind, "TEXT")


def config_flag_parameters() -> list[inspect.Parameter]:
    """A keyword-only parameter per config field (typed as text: the config checks the value);
    a boolean field also gets a hidden --no-x parameter, named in the --x flag's help."""
    params = []
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
        option = typer.Option(None, flag(name), help=escape_help(help_text),
                              metavar=None if is_bool else _metavar(name), show_default=False, rich_help_panel=PANEL)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[bool] if is_bool else Optional[str]))
    return params


def with_config_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` (which takes its own options and `flags`) with a flag per config field added to
    its signature; the values of those flags reach it as `flags`."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "flags"]
    generated = config_flag_parameters()
    names = {p.name for p in generated}

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        flags = {name: values.pop(name) for name in list(values) if name in names}
        return command(**values, flags=flags)

    wrapper.__signature__ = inspect.Signature(own + generated)  # what typer reads the options from
    wrapper.__annotations__ = {p.name: p.annotation for p in own + generated}
    return wrapper


def config_from_flags(config_file: Optional[Path], flags: dict[str, Any]) -> TrainConfig:
    """The config of `--config FILE` with the flags given on top. The file and the flags are
    checked together, once merged (a flag may fix a value in the file); an error names the flag,
    or the file and key, it came from."""
    values: dict[str, Any] = load_config_file(config_file) if config_file is not None else {}
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
        return TrainConfig.from_mapping(values)
    except ConfigError as exc:
        where = flag(exc.field) if exc.field in given else f"{config_file}: key {exc.field!r}"
        raise ConfigError(None, f"{where}: {exc.message}", exc.hint) from None
