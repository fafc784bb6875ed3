"""The training configuration: one dataclass, validated on construction.

Every field carries its help text, so the CLI builds `ptbjobs train --FIELD` flags from this class
and a grid file (later) can name the same keys. Defaults are Zaremba et al.'s "small" model exactly;
anything that departs from the paper (tied weights, variational dropout) is off by default.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import tomllib

from ptbjobs.core.errors import ConfigError


class CellType(str, enum.Enum):
    LSTM = "lstm"
    GRU = "gru"


class LossScale(str, enum.Enum):
    # Zaremba: loss summed over the bptt steps, averaged over the batch (lr 1, clip 5).
    ZAREMBA = "zaremba"
    # PyTorch's token mean; the same updates as `zaremba` with lr x bptt and clip / bptt.
    TOKEN_MEAN = "token_mean"

    def divisor(self, inputs: Any) -> int:
        """What a chunk's summed NLL is divided by: its columns (zaremba) or its tokens."""
        return inputs.size(1) if self is LossScale.ZAREMBA else inputs.numel()


class Schedule(str, enum.Enum):
    # lr held for `decay_after` epochs, then multiplied by `lr_decay` after every epoch.
    STEP = "step"
    # lr multiplied by `lr_decay` after every epoch whose valid perplexity is no new best.
    PLATEAU = "plateau"


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what one training run computes (plus how often it checkpoints)."""

    # --- model ---
    cell: CellType = _opt(CellType.LSTM, "recurrent cell: lstm or gru")
    emb_size: int = _opt(200, "word embedding size")
    hidden_size: int = _opt(200, "units per recurrent layer")
    num_layers: int = _opt(2, "recurrent layers")
    dropout: float = _opt(0.0, "dropout on embedding->L1, between layers and before the softmax, in [0, 1)")
    variational_dropout: bool = _opt(False, "one dropout mask per sequence instead of per time step")
    recurrent_dropout: float = _opt(0.0, "dropout on each layer's previous hidden state as it enters the gates, "
                                         "one mask per sequence (Gal & Ghahramani), in [0, 1); trains step by "
                                         "step, without cuDNN's fused layer")
    word_dropout: float = _opt(0.0, "drop whole words: each word type of each sequence has its embedding zeroed at "
                                    "every occurrence with this probability (Gal & Ghahramani), in [0, 1)")
    tie_weights: bool = _opt(False, "share the input embedding with the softmax weights")
    init_scale: float = _opt(0.1, "every parameter starts uniform in [-init_scale, init_scale]")
    # --- data ---
    batch_size: int = _opt(20, "columns the training stream is cut into")
    bptt: int = _opt(20, "time steps per chunk (truncated backpropagation)")
    eval_batch_size: int = _opt(10, "columns for the validation and test streams")
    # --- optimisation ---
    epochs: int = _opt(13, "passes over the training data")
    epoch_steps: int = _opt(0, "train only the first this many chunks of each epoch (0: all); for smoke runs")
    lr: float = _opt(1.0, "SGD learning rate (in the units of --loss-scale)")
    lr_decay: float = _opt(0.5, "factor the learning rate is multiplied by when it decays, in (0, 1]")
    decay_after: int = _opt(4, "epochs at the initial learning rate before the step schedule decays it")
    schedule: Schedule = _opt(Schedule.STEP, "learning-rate schedule: step or plateau")
    clip: float = _opt(5.0, "clip the global gradient norm to this (0 turns clipping off)")
    weight_decay: float = _opt(0.0, "L2 penalty: SGD adds this times each parameter to its gradient, after clipping "
                                    "(PyTorch's SGD weight_decay, in the units of --loss-scale)")
    loss_scale: LossScale = _opt(LossScale.ZAREMBA, "zaremba (sum over steps, mean over batch) or token_mean")
    seed: int = _opt(1, "random seed of initialisation and dropout")
    # --- execution (may change between a run and its resumption) ---
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    cuda_graph: bool = _opt(True, "on a GPU, replay each training step as one CUDA graph (no effect on CPU)")
    max_steps: int = _opt(0, "stop after this many training steps in all (0: no limit); for smoke tests")
    checkpoint_every_min: float = _opt(10.0, "save the resumable state at least this often (0: off)")
    checkpoint_every_steps: int = _opt(0, "also save it every this many steps (0: off)")

    def __post_init__(self) -> None:
        # written for speed as much as for checking: a grid of 100,000 runs builds 100,000 configs
        values = self.__dict__
        for name, enum_type in _ENUM_TYPES:
            if values[name].__class__ is not enum_type:
                object.__setattr__(self, name, _to_enum(name, enum_type, values[name]))
        for name in _FLOAT_FIELDS:
            if not math.isfinite(values[name]):
                raise ConfigError(name, f"must be a finite number, got {values[name]}")
        if self.seed >= 2**63:
            raise ConfigError("seed", f"must be below 2**63, got {self.seed}")
        for name in ("emb_size", "hidden_size", "num_layers", "batch_size", "bptt",
                     "eval_batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be a positive integer, got {getattr(self, name)}")
        for name in ("decay_after", "epoch_steps", "max_steps", "checkpoint_every_steps", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be 0 or more, got {getattr(self, name)}")
        for name in ("dropout", "recurrent_dropout", "word_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(name, f"must be in [0, 1), got {getattr(self, name)}")
        if not self.init_scale > 0:
            raise ConfigError("init_scale", f"must be positive, got {self.init_scale}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be positive, got {self.lr}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError("lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        for name in ("clip", "weight_decay", "checkpoint_every_min"):
            if not getattr(self, name) >= 0:
                raise ConfigError(name, f"must be 0 or more, got {getattr(self, name)}")
        if self.tie_weights and self.emb_size != self.hidden_size:
            raise ConfigError(
                "tie_weights",
                f"needs emb_size == hidden_size, got {self.emb_size} and {self.hidden_size}",
                "set both sizes equal or drop tie_weights",
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    # ---- conversion ----

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums as their strings)."""
        values = {name: self.__dict__[name] for name in _FIELD_NAMES}
        for name in _ENUM_FIELDS:
            values[name] = values[name].value
        return values

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping of field -> value (from JSON, TOML or CLI strings), checking each
        key exists and each value has the field's type."""
        kwargs = {}
        for key, value in values.items():
            if key not in _FIELD_TYPES:
                raise ConfigError(key, "unknown key", suggest_key(key, _FIELD_TYPES))
            kwargs[key] = coerce(key, value)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Fields whose change between a run and its resumption does not change what it computes
# (on one device type), so a resume with different values is allowed.
RESUME_NEUTRAL_FIELDS = frozenset({"device", "cuda_graph", "checkpoint_every_min", "checkpoint_every_steps"})

# Fields added after sweeps had been run with ptbjobs. At its default such a field computes what
# runs did before it existed, so there it stays out of a run's identity (`grid.config_hash`), and a
# config saved without it reads as that default: upgrading ptbjobs leaves finished runs finished.
LATER_FIELDS = frozenset({"recurrent_dropout", "word_dropout", "weight_decay"})

_FIELD_TYPES: dict[str, type] = typing.get_type_hints(TrainConfig)
# the fields in order, looked up once: a grid of 100,000 runs builds and hashes 100,000 configs
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
_ENUM_FIELDS = tuple(name for name in _FIELD_NAMES if isinstance(_FIELD_TYPES[name], type) and issubclass(_FIELD_TYPES[name], enum.Enum))
_ENUM_TYPES = tuple((name, _FIELD_TYPES[name]) for name in _ENUM_FIELDS)
_FLOAT_FIELDS = tuple(name for name in _FIELD_NAMES if _FIELD_TYPES[name] is float)
FIELD_HELP: dict[str, str] = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


def field_type(name: str) -> type:
    return _FIELD_TYPES[name]


def coerce(name: str, value: Any) -> Any:
    """Convert `value` (a string from the command line, or a JSON/TOML value) to field `name`'s
    type, or raise a ConfigError that says what was expected."""
    kind = _FIELD_TYPES[name]
    if issubclass(kind, enum.Enum):
        return _to_enum(name, kind, value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        raise ConfigError(name, f"must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(name, f"must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(name, f"must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, f"must be a string, got {value!r}")
    raise TypeError(f"no conversion for field {name} of type {kind}")  # a bug, not user input


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON or TOML file of training fields: either flat, or with the fields under a
    `train` table (as in a run folder's config.json). Returns the raw mapping."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(None, f"config file {path} is not UTF-8 text", "give a JSON or TOML file") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(None, f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(None, f"{path}: expected a table of training fields")
    if isinstance(data.get("train"), dict):
        data = data["train"]
    return data


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _to_enum(name: str, kind: type[enum.Enum], value: Any) -> enum.Enum:
    try:
        return kind(value.lower() if isinstance(value, str) else value)
    except ValueError:
        valid = ", ".join(member.value for member in kind)
        raise ConfigError(name, f"must be one of {valid}; got {value!r}") from None


def suggest_key(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid keys: " + ", ".join(known)


FIELD_DEFAULTS: dict[str, Any] = TrainConfig().to_dict()

# the settings that must be equal for runs to train as one fused model (train/fused.py): the
# tensors' shapes, and the kinds of computation (a rate may differ; whether masks are per step or
# per sequence may not). Here, not in fused.py: submit groups runs by them without torch.
SHAPE_FIELDS = ("cell", "emb_size", "hidden_size", "num_layers", "tie_weights", "variational_dropout",
                "batch_size", "bptt", "eval_batch_size", "loss_scale", "epoch_steps", "max_steps", "device")


def fusion_key(config: TrainConfig | Mapping[str, Any]) -> tuple:
    """Runs with equal keys can train as one fused model (a config or its saved dict)."""
    values = config if isinstance(config, Mapping) else config.to_dict()
    return tuple(saved_config(values)[name] for name in SHAPE_FIELDS)


def saved_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config as saved (manifest, checkpoint), every field present: one it predates
    (`LATER_FIELDS`) held its default then."""
    return {**FIELD_DEFAULTS, **values}
