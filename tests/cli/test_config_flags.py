"""`ptbjobs train`'s flags made from TrainConfig: one per field, and the values merged with --config."""

from __future__ import annotations

import inspect
import json

import pytest

from ptbjobs.cli.config_flags import NO_PREFIX, config_flag_parameters, config_from_flags, with_config_flags
from ptbjobs.core.errors import ConfigError
from ptbjobs.train.config import FIELD_DEFAULTS, TrainConfig


def test_every_config_field_gets_a_flag_and_each_boolean_a_hidden_no_flag():
    params = {p.name: p for p in config_flag_parameters()}
    assert set(FIELD_DEFAULTS) <= set(params)
    booleans = {name for name, value in FIELD_DEFAULTS.items() if isinstance(value, bool)}
    assert {name for name in params if name.startswith(NO_PREFIX)} == {NO_PREFIX + name for name in booleans}
    assert params["no_cuda_graph"].default.param_decls == ("--no-cuda-graph",) and params["no_cuda_graph"].default.hidden
    assert params["lr"].default.param_decls == ("--lr",) and "[default: 1.0]" in params["lr"].default.help


def test_the_wrapped_command_keeps_its_own_options_and_gets_the_flags_as_one_mapping():
    seen = {}

    def command(out: str = "x", *, flags: dict) -> str:
        seen.update(out=out, flags=flags)
        return "done"

    wrapped = with_config_flags(command)
    names = list(inspect.signature(wrapped).parameters)
    assert names[0] == "out" and "flags" not in names and "lr" in names and "no_tie_weights" in names
    assert wrapped(out="y", lr="0.5", no_tie_weights=False) == "done"
    assert seen == {"out": "y", "flags": {"lr": "0.5", "no_tie_weights": False}}


def test_flags_override_the_config_file_and_no_flags_turn_booleans_off(tmp_path):
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"lr": 0.25, "tie_weights": True, "epochs": 3}))
    config = config_from_flags(config_file, {"lr": "0.5", "no_tie_weights": True, "seed": None})
    assert config == TrainConfig(lr=0.5, tie_weights=False, epochs=3)


@pytest.mark.parametrize("flags, message", [
    ({"tie_weights": True, "no_tie_weights": True}, "--tie-weights and --no-tie-weights contradict each other"),
    ({"lr": "fast"}, "--lr: must be a number, got 'fast'"),
    ({"dropout": "1.5"}, "--dropout: must be in [0, 1), got 1.5"),
])
def test_a_bad_flag_is_named_in_the_error(flags, message):
    with pytest.raises(ConfigError) as caught:
        config_from_flags(None, flags)
    assert str(caught.value).startswith(message)


def test_a_bad_value_from_the_file_names_the_file_and_key(tmp_path):
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"dropout": 1.5}))
    with pytest.raises(ConfigError) as caught:
        config_from_flags(config_file, {"lr": "0.5"})
    assert str(caught.value).startswith(f"{config_file}: key 'dropout': must be in [0, 1)")
