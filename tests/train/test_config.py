from __future__ import annotations

import pytest

from ptbjobs.core.errors import ConfigError
from ptbjobs.train.config import CellType, LossScale, Schedule, TrainConfig, coerce, load_config_file


def test_defaults_are_zaremba_small():
    c = TrainConfig()
    assert (c.cell, c.emb_size, c.hidden_size, c.num_layers) == (CellType.LSTM, 200, 200, 2)
    assert (c.batch_size, c.bptt, c.epochs, c.lr, c.lr_decay, c.decay_after, c.clip) == (20, 20, 13, 1.0, 0.5, 4, 5.0)
    assert (c.dropout, c.init_scale, c.loss_scale, c.schedule) == (0.0, 0.1, LossScale.ZAREMBA, Schedule.STEP)
    assert not c.tie_weights and not c.variational_dropout and c.recurrent_dropout == 0.0
    assert (c.word_dropout, c.weight_decay) == (0.0, 0.0)


@pytest.mark.parametrize("field, value, message", [
    ("dropout", 1.0, "must be in [0, 1)"),
    ("dropout", -0.1, "must be in [0, 1)"),
    ("recurrent_dropout", 1.0, "must be in [0, 1)"),
    ("word_dropout", 1.0, "must be in [0, 1)"),
    ("weight_decay", -1e-6, "must be 0 or more"),
    ("lr", 0.0, "must be positive"),
    ("lr_decay", 1.5, "must be in (0, 1]"),
    ("hidden_size", 0, "must be a positive integer"),
    ("epochs", -3, "must be a positive integer"),
    ("bptt", 0, "must be a positive integer"),
    ("decay_after", -1, "must be 0 or more"),
    ("init_scale", 0.0, "must be positive"),
    ("device", "tpu", "must be auto, cpu, cuda or cuda:N"),
])
def test_out_of_range_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{field: value})
    assert caught.value.field == field
    assert message in caught.value.message


def test_an_unknown_cell_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="must be one of lstm, gru; got 'rnn'"):
        TrainConfig.from_mapping({"cell": "rnn"})


def test_tied_weights_need_equal_embedding_and_hidden_sizes():
    with pytest.raises(ConfigError, match="emb_size == hidden_size"):
        TrainConfig(tie_weights=True, emb_size=100)


def test_an_unknown_key_suggests_the_closest_field():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_mapping({"learning_rate": 1})
    assert caught.value.field == "learning_rate"
    assert "unknown key" in caught.value.message


def test_strings_from_the_command_line_are_coerced_to_field_types():
    assert coerce("lr", "0.5") == 0.5
    assert coerce("epochs", "13") == 13
    assert coerce("tie_weights", "yes") is True
    assert coerce("cell", "GRU") is CellType.GRU
    for field, bad in [("epochs", "1.5"), ("lr", "fast"), ("tie_weights", "maybe"), ("epochs", True)]:
        with pytest.raises(ConfigError):
            coerce(field, bad)


def test_config_round_trips_through_its_dict():
    c = TrainConfig(cell="gru", dropout=0.3, lr=0.5, schedule="plateau")
    assert TrainConfig.from_mapping(c.to_dict()) == c


def test_a_config_file_may_be_flat_toml_or_a_run_folders_config_json(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('cell = "gru"\nlr = 0.5\n')
    assert load_config_file(toml) == {"cell": "gru", "lr": 0.5}
    as_json = tmp_path / "config.json"
    as_json.write_text('{"train": {"cell": "gru"}, "data": {}}')
    assert load_config_file(as_json) == {"cell": "gru"}
    broken = tmp_path / "broken.toml"
    broken.write_text("lr = = 1")
    with pytest.raises(ConfigError, match="not valid toml"):
        load_config_file(broken)
