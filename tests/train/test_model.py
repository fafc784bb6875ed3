from __future__ import annotations

import pytest
import torch

from ptbjobs.train.config import TrainConfig
from ptbjobs.train.model import RNNLM, count_parameters, detach


def capture_inputs(model: RNNLM) -> dict[str, torch.Tensor]:
    """The input tensor each recurrent module and the decoder sees on the next forward: with
    separate layers "layer1", "layer2", "decoder"; with the fused module "layer1" and "decoder"."""
    seen: dict[str, torch.Tensor] = {}
    recurrent = [("layer1", model.rnn)] if model.fused else [("layer1", model.layers[0]), ("layer2", model.layers[1])]
    for name, module in recurrent + [("decoder", model.decoder)]:
        module.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, args[0].detach()))
    return seen


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_parameter_starts_uniform_within_init_scale(cell):
    model = RNNLM(TrainConfig(cell=cell, init_scale=0.1), vocab_size=1000)
    for name, parameter in model.named_parameters():
        assert parameter.abs().max() <= 0.1, name
        assert parameter.abs().max() > 0.09, name  # really spread over the range, not zeros
    # PyTorch's Embedding default would be N(0, 1)
    assert model.embedding.weight.std() < 0.07


def test_the_parameter_count_counts_two_bias_vectors_per_gate():
    model = RNNLM(TrainConfig(), vocab_size=10000)
    lstm_layer = sum(p.numel() for name, p in model.rnn.named_parameters() if name.endswith("_l0"))
    assert lstm_layer == 321_600  # 4 gates x (200x200 + 200x200 + 200 + 200)
    assert count_parameters(model) == 10000 * 200 + 2 * 321_600 + 200 * 10000 + 10000


def test_tied_weights_share_one_tensor_and_count_once():
    model = RNNLM(TrainConfig(tie_weights=True), vocab_size=10000)
    assert model.decoder.weight is model.embedding.weight
    assert count_parameters(model) == 10000 * 200 + 2 * 321_600 + 10000


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("variational", [False, True], ids=["fused", "separate-layers"])
def test_dropout_hits_the_three_non_recurrent_connections_and_nothing_in_eval(cell, variational):
    torch.manual_seed(0)
    model = RNNLM(TrainConfig(cell=cell, dropout=0.5, emb_size=64, hidden_size=64, variational_dropout=variational),
                  vocab_size=50)
    if model.fused:
        # PyTorch applies a multi-layer RNN's dropout to each layer's output but the last: exactly
        # the layer 1 -> layer 2 connection, never the recurrent path
        assert model.rnn.num_layers == 2 and model.rnn.dropout == 0.5
        watched = ("layer1", "decoder")
    else:
        assert all(layer.dropout == 0 for layer in model.layers)  # no dropout inside a recurrent module
        watched = ("layer1", "layer2", "decoder")
    seen = capture_inputs(model)
    inputs = torch.randint(0, 50, (20, 8))
    model.train()
    model(inputs, model.init_hidden(8))
    for name in watched:
        zero_fraction = (seen[name] == 0).float().mean().item()
        assert 0.4 < zero_fraction < 0.6, (name, zero_fraction)
    model.eval()
    model(inputs, model.init_hidden(8))
    for name in watched:
        assert (seen[name] == 0).float().mean().item() < 0.01, name


def test_the_fused_modules_inner_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = RNNLM(TrainConfig(dropout=0.5, emb_size=16, hidden_size=16), vocab_size=30)
    inputs, hidden = torch.randint(0, 30, (10, 4)), model.init_hidden(4)
    model.eval()
    a, _ = model(inputs, hidden)
    b, _ = model(inputs, hidden)
    assert torch.equal(a, b)
    model.train()
    model.dropout = 0.0  # outer dropout off: any randomness left comes from between the layers
    c, _ = model(inputs, hidden)
    d, _ = model(inputs, hidden)
    assert not torch.equal(c, d)


def test_variational_dropout_drops_the_same_units_at_every_time_step():
    torch.manual_seed(0)
    model = RNNLM(TrainConfig(dropout=0.5, variational_dropout=True, emb_size=32, hidden_size=32), vocab_size=50)
    seen = capture_inputs(model)
    model(torch.randint(0, 50, (12, 6)), model.init_hidden(6))
    for name in ("layer1", "layer2", "decoder"):
        dropped = seen[name] == 0  # (T, B, F)
        assert dropped.any(), name
        assert torch.equal(dropped, dropped[:1].expand_as(dropped)), name
        assert not torch.equal(dropped[:, 0], dropped[:, 1]), name  # but one mask per sequence


@pytest.mark.parametrize("cell, variational, shapes", [
    ("lstm", False, [(2, 3, 8)] * 2), ("gru", False, [(2, 3, 8)]),
    ("lstm", True, [(1, 3, 8)] * 4), ("gru", True, [(1, 3, 8)] * 2),
])
def test_the_hidden_state_is_carried_and_detachable(cell, variational, shapes):
    model = RNNLM(TrainConfig(cell=cell, emb_size=8, hidden_size=8, variational_dropout=variational), vocab_size=20)
    hidden = model.init_hidden(3)
    assert [tuple(h.shape) for h in hidden] == shapes
    logits, hidden = model(torch.randint(0, 20, (5, 3)), hidden)
    assert logits.shape == (5, 3, 20)
    assert all(h.requires_grad for h in hidden)
    assert not any(h.requires_grad for h in detach(hidden))
    # a carried state changes the next output: the model really reads it
    step = torch.randint(0, 20, (1, 3))
    fresh, _ = model(step, model.init_hidden(3))
    carried, _ = model(step, hidden)
    assert not torch.allclose(fresh, carried)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_by_step_without_a_mask_computes_what_the_module_computes(cell):
    from ptbjobs.train.model import step_by_step

    torch.manual_seed(0)
    layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(6, 8)
    x = torch.randn(7, 3, 6)
    state = [torch.randn(1, 3, 8) for _ in range(2 if cell == "lstm" else 1)]
    expected_out, expected_state = layer(x, tuple(state) if cell == "lstm" else state[0])
    out, final = step_by_step(layer, x, state, recurrent_dropout=0.0)  # the mask is all ones
    torch.testing.assert_close(out, expected_out)
    for a, b in zip(final if cell == "lstm" else (final,), expected_state if cell == "lstm" else (expected_state,)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_dropout_cuts_the_same_hidden_units_from_the_gates_at_every_step(cell):
    # For one sequence, a unit dropped from h where it enters the gates leaves its column of the
    # recurrent weights without gradient, at every step; a unit kept has one. A mask drawn per step
    # would reach every column.
    from ptbjobs.train.model import step_by_step

    torch.manual_seed(0)
    layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(6, 32)
    state = [torch.randn(1, 1, 32) for _ in range(2 if cell == "lstm" else 1)]
    out, _ = step_by_step(layer, torch.randn(10, 1, 6), state, recurrent_dropout=0.5)
    out.sum().backward()
    reached = layer.weight_hh_l0.grad.abs().sum(dim=0) > 0  # (H,): columns = units of h
    assert 8 < int(reached.sum()) < 24, reached  # about half kept
    assert layer.bias_hh_l0.grad.abs().sum() > 0


def test_a_model_with_recurrent_dropout_is_random_in_training_and_exact_in_evaluation():
    torch.manual_seed(0)
    config = TrainConfig(emb_size=16, hidden_size=16, recurrent_dropout=0.3)
    model = RNNLM(config, vocab_size=30)
    assert not model.fused
    inputs, hidden = torch.randint(0, 30, (10, 4)), model.init_hidden(4)
    a, _ = model(inputs, hidden)
    b, _ = model(inputs, hidden)
    assert not torch.equal(a, b)
    model.eval()
    c, _ = model(inputs, hidden)
    model.recurrent_dropout = 0.0  # the same weights without the option: what evaluation must equal
    d, _ = model(inputs, hidden)
    torch.testing.assert_close(c, d)


def test_word_dropout_drops_a_word_type_at_all_its_steps_in_a_sequence_and_nothing_in_evaluation():
    torch.manual_seed(0)
    config = TrainConfig(emb_size=8, hidden_size=8, word_dropout=0.5)
    model = RNNLM(config, vocab_size=6)
    seen = capture_inputs(model)
    inputs = torch.randint(0, 6, (40, 16))  # each column repeats its words many times
    model(inputs, model.init_hidden(16))
    embedded = model.embedding(inputs).detach()
    factor = seen["layer1"] / embedded  # (T, B, E): 0 where dropped, 1 / (1 - p) = 2 where kept
    assert torch.all((factor == 0) | torch.isclose(factor, torch.tensor(2.0)))
    assert torch.all(factor == factor[..., :1])  # a whole embedding, never single units
    per_token = factor[..., 0]
    dropped = kept = 0
    for column in range(16):
        for word in inputs[:, column].unique():
            values = per_token[inputs[:, column] == word, column]
            assert torch.all(values == values[0]), (column, word)  # one draw per word type and sequence
            dropped, kept = dropped + int(values[0] == 0), kept + int(values[0] != 0)
    assert dropped > 10 and kept > 10  # about half of the 16 x 6 word types of the chunk
    model.eval()
    model(inputs, model.init_hidden(16))
    torch.testing.assert_close(seen["layer1"], embedded)


def test_word_dropout_leaves_a_tied_softmax_every_word():
    torch.manual_seed(0)
    config = TrainConfig(emb_size=8, hidden_size=8, tie_weights=True, word_dropout=0.9)
    model = RNNLM(config, vocab_size=6)
    weights = model.embedding.weight.detach().clone()
    logits, _ = model(torch.randint(0, 6, (5, 3)), model.init_hidden(3))
    torch.testing.assert_close(model.decoder.weight.detach(), weights)  # the matrix itself is not masked
    assert torch.all(logits.std(dim=-1) > 0)
