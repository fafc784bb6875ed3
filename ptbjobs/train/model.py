"""The language model: embedding -> stacked LSTM/GRU -> softmax over the vocabulary.

Dropout sits only on the non-recurrent connections (Zaremba et al. 2014, fig. 2): on the embedding
going into layer 1, between layers, and on the last layer's output going into the softmax. PyTorch's
`nn.LSTM(num_layers=2, dropout=p)` covers exactly the middle one (between layers, never the
recurrent path), so the model uses one such multi-layer module, a single fused kernel, and drops the
other two itself. Variational dropout needs one mask per sequence between layers too, which the
fused module cannot do: then the layers are separate single-layer modules.

Recurrent dropout (Gal & Ghahramani 2016) also masks each layer's previous hidden state where it
enters the gates, with one mask per sequence; the state carried on is not masked. cuDNN's layer has
no place for that mask, so in training those layers run step by step from their own weights (the
same equations as PyTorch's modules); in evaluation, where nothing is dropped, the modules run.

Word dropout (Gal & Ghahramani's embedding dropout) drops word types rather than units: in each
sequence (a column of the chunk) a dropped word has its whole embedding zeroed wherever it occurs,
so the model cannot lean on any one word. It masks the lookup, not the embedding matrix, so a tied
softmax still sees every word's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptbjobs.train.config import CellType, TrainConfig

# Hidden state: a flat list of tensors, so it can be detached, moved and checkpointed without
# knowing its layout. Fused module: [h] (GRU) or [h, c] (LSTM), each (layers, batch, hidden).
# Separate layers: per layer [h] or [h, c], each (1, batch, hidden).
Hidden = list[torch.Tensor]

_CELL_MODULES = {CellType.LSTM: nn.LSTM, CellType.GRU: nn.GRU}
_STATES_PER_LAYER = {CellType.LSTM: 2, CellType.GRU: 1}


class RNNLM(nn.Module):
    def __init__(self, config: TrainConfig, vocab_size: int):
        super().__init__()
        self.cell = config.cell
        self.num_layers = config.num_layers
        self.hidden_size = config.hidden_size
        self.dropout = config.dropout
        self.variational = config.variational_dropout
        self.recurrent_dropout = config.recurrent_dropout
        self.word_dropout = config.word_dropout
        self.embedding = nn.Embedding(vocab_size, config.emb_size)
        rnn = _CELL_MODULES[config.cell]
        self.fused = not config.variational_dropout and config.recurrent_dropout == 0.0
        if self.fused:
            self.rnn = rnn(config.emb_size, config.hidden_size, config.num_layers,
                           dropout=config.dropout if config.num_layers > 1 else 0.0)
        else:
            self.layers = nn.ModuleList(
                rnn(config.emb_size if i == 0 else config.hidden_size, config.hidden_size)
                for i in range(config.num_layers)
            )
        self.decoder = nn.Linear(config.hidden_size, vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight
        # Zaremba initialises every parameter, embedding and biases included, uniform in
        # +-init_scale (PyTorch's Embedding default, N(0, 1), would be far too large).
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -config.init_scale, config.init_scale)

    def init_hidden(self, batch_size: int) -> Hidden:
        weight = self.decoder.weight
        states = _STATES_PER_LAYER[self.cell]
        if self.fused:
            return [weight.new_zeros(self.num_layers, batch_size, self.hidden_size) for _ in range(states)]
        return [weight.new_zeros(1, batch_size, self.hidden_size) for _ in range(self.num_layers * states)]

    def forward(self, inputs: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """inputs (T, B) word ids -> logits (T, B, V) and the hidden state after step T."""
        x = self.embedding(inputs)  # (T, B, E)
        if self.training and self.word_dropout > 0.0:
            x = x * word_mask(inputs, self.embedding.num_embeddings, self.word_dropout, x)
        x = self._drop(x)
        if self.fused:
            x, state = self.rnn(x, tuple(hidden) if self.cell is CellType.LSTM else hidden[0])  # (T, B, H)
            new_state = list(state) if self.cell is CellType.LSTM else [state]
            return self.decoder(self._drop(x)), new_state  # (T, B, V)
        per_layer = _STATES_PER_LAYER[self.cell]
        new_hidden: Hidden = []
        for index, layer in enumerate(self.layers):
            state = hidden[index * per_layer : (index + 1) * per_layer]
            if self.training and self.recurrent_dropout > 0.0:
                x, out_state = step_by_step(layer, x, state, self.recurrent_dropout)
            else:
                x, out_state = layer(x, tuple(state) if per_layer == 2 else state[0])  # (T, B, H)
            new_hidden.extend(out_state if per_layer == 2 else (out_state,))
            x = self._drop(x)
        return self.decoder(x), new_hidden  # (T, B, V)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0.0:
            return x
        if not self.variational:
            return F.dropout(x, self.dropout, training=True)
        # One mask per sequence (Gal & Ghahramani): the same units dropped at every time step.
        return x * sequence_mask(x[0], self.dropout)


def sequence_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """An inverted-dropout mask shaped like one time step (B, F): each unit of each sequence kept
    with probability 1 - p and scaled by 1 / (1 - p), for reuse at every step."""
    keep = 1.0 - p
    return like.new_empty(like.shape).bernoulli_(keep) / keep


def word_mask(inputs: torch.Tensor, vocab_size: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """For word ids (T, B): a (T, B, 1) inverted-dropout factor in which each word type of each
    column is kept with probability 1 - p (scaled by 1 / (1 - p)) or dropped at all its steps."""
    per_type = sequence_mask(like.new_empty(inputs.size(1), vocab_size), p)  # (B, V)
    return per_type.gather(1, inputs.t()).t().unsqueeze(-1)


def step_by_step(layer: nn.LSTM | nn.GRU, x: torch.Tensor, state: Hidden,
                 recurrent_dropout: float) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, ...]]:
    """One single-layer LSTM or GRU over x (T, B, E), a step at a time, with the previous hidden
    state masked (one mask per sequence) where it enters the gates. Returns what the module would:
    outputs (T, B, H) and the final state, (h, c) or h, each (1, B, H). PyTorch's gate order and
    equations: LSTM i, f, g, o; GRU r, z, n with n = tanh(x_n + r * (W_hn h + b_hn))."""
    w_ih, w_hh, b_ih, b_hh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
    h = state[0][0]  # (B, H)
    mask = sequence_mask(h, recurrent_dropout)
    from_input = F.linear(x, w_ih, b_ih)  # (T, B, gates * H): every step's input part at once
    outputs = []
    if isinstance(layer, nn.LSTM):
        c = state[1][0]
        for t in range(x.size(0)):
            i, f, g, o = (from_input[t] + F.linear(h * mask, w_hh, b_hh)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))
    for t in range(x.size(0)):
        x_r, x_z, x_n = from_input[t].chunk(3, dim=1)
        h_r, h_z, h_n = F.linear(h * mask, w_hh, b_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
        outputs.append(h)
    return torch.stack(outputs), h.unsqueeze(0)


def detach(hidden: Hidden) -> Hidden:
    """Cut the graph at the chunk boundary, keeping the values (truncated BPTT)."""
    return [h.detach() for h in hidden]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, a tied embedding counted once. PyTorch's recurrent layers have two
    bias vectors per gate (input and hidden), so an LSTM layer of 200 on 200 inputs counts 321,600."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
