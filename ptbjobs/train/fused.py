"""K runs of one shape trained as one batched model (horizontal fusion).

One run of the small model leaves a GPU almost idle: each step is a few hundred kernels on 20 x 200
matrices. A pack of K runs with the same shapes (cell, sizes, layers, bptt, batch, vocabulary, tied
or not, dropout kind) keeps each parameter of the solo model as one tensor with a leading run
dimension, so that each matrix product of a step is one batched product for all K runs:

    embedding (K, V, E)   w_ih (K, G*H, in)   w_hh (K, G*H, H)   b_ih, b_hh (K, G*H)
    decoder (K, V, H) + (K, V), or the embedding itself when tied

The cells are written out with PyTorch's gate layout and equations (LSTM i, f, g, o; GRU r, z, n
with n = tanh(x_n + r * (W_hn h + b_hn))), as `model.step_by_step` does; cuDNN's layer has no
run dimension, and torch.func.vmap has no batching rule for nn.LSTM/nn.GRU.

What may differ between the runs of a pack, each kept per run: the seed (so the initial weights:
each run's are its solo model's), dropout rates, learning rate and its schedule, weight decay and
clipping (each run's own global norm), and epochs. The gradient of one run never touches another's
weights: the loss is a sum of the runs' losses, and no operation mixes the run dimension.

Dropout draws from a counter-based generator: the keep/drop decision of each unit is a hash of the
run's seed, the step, the dropout site and the unit's position (splitmix64's mixing function, in
int64 tensor arithmetic). So each run has its own random stream, unaffected by which runs share
its pack, a pack resumes exactly from its step count alone, and the step can be captured as a CUDA
graph (a generator's state would have to be registered with the graph). A run with rate 0 draws
nothing: its masks are exactly 1.

Each run's solo model (`RNNLM`) is kept, its parameters made views of its slice of the stacked
tensors: its checkpoints, best weights and evaluation are those of a solo run, and loading a
checkpoint into it loads into the pack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptbjobs.train.config import CellType, TrainConfig, fusion_key
from ptbjobs.train.corpus import iter_chunks
from ptbjobs.train.model import RNNLM

# dropout sites: where a mask is drawn (each layer's recurrent mask has its own site)
_SITE_WORDS, _SITE_INPUT, _SITE_OUTPUT, _SITE_BETWEEN, _SITE_RECURRENT = 1, 2, 3, 16, 32


# ---- the counter-based generator ----

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch shifts arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors; multiplication wraps modulo 2**64."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def mix64_int(x: int) -> int:
    """The same function on a Python integer (the reference the tensor version is tested against)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def stream_keys(seeds: list[int], step: int, site: int) -> list[int]:
    """Each run's key for one draw: a hash of its seed, the step and the site."""
    return [_signed(mix64_int(mix64_int(seed * 0x9E3779B97F4A7C15 + site) + step)) for seed in seeds]


def uniforms(keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(K, *shape) floats in [0, 1), 24 random bits each, run k's from its key keys[k]."""
    count = 1
    for size in shape:
        count *= size
    index = torch.arange(count, device=keys.device, dtype=torch.int64) * _GOLDEN
    bits = _shift_right(mix64(index.unsqueeze(0) + keys.view(-1, 1)), 40)
    return (bits.to(torch.float32) * (1.0 / (1 << 24))).view(keys.numel(), *shape)


def keep_masks(keys: torch.Tensor, rates: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout masks (K, *shape): a unit kept with probability 1 - rate, scaled by
    1 / (1 - rate); all ones (exactly) for a run of rate 0."""
    rates = rates.view(-1, *([1] * len(shape)))
    keep = (uniforms(keys, shape) >= rates).to(like.dtype)
    return keep / (1.0 - rates).to(like.dtype)


# ---- the model ----

class _Decoder(torch.autograd.Function):
    """logits = x W^T + b for each run: (K, N, H), (K, V, H), (K, V) -> (K, N, V). Written out
    because autograd's own backward of the transposed product makes W's gradient in the
    transposed layout and then copies it (K x V x H floats each step, as much as the product)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        return torch.bmm(grad, weight), torch.bmm(grad.transpose(1, 2), x), grad.sum(dim=1)


_GATES = {CellType.LSTM: 4, CellType.GRU: 3}


def _layer_parameters(model: RNNLM, layer: int) -> tuple[nn.Module, list[str]]:
    """The module holding a layer's weights, and their names in it (ih weight, hh weight, ih bias, hh bias)."""
    if model.fused:
        return model.rnn, [f"{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    return model.layers[layer], ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]


@dataclass
class PackSettings:
    """What differs between the runs of a pack, one value per run, on the pack's device."""
    dropout: torch.Tensor
    recurrent_dropout: torch.Tensor
    word_dropout: torch.Tensor
    weight_decay: torch.Tensor
    clip: torch.Tensor
    seeds: list[int]

    @classmethod
    def of(cls, configs: list[TrainConfig], device: torch.device) -> PackSettings:
        def column(name: str) -> torch.Tensor:
            return torch.tensor([float(getattr(c, name)) for c in configs], dtype=torch.float32, device=device)
        return cls(column("dropout"), column("recurrent_dropout"), column("word_dropout"), column("weight_decay"),
                   column("clip"), [c.seed for c in configs])


class FusedModel:
    """The runs' solo models as one batched model. `models[k]` keeps run k's parameters as views
    of slice k of this model's tensors, which are the ones trained."""

    # on a CPU: each run's layers through torch's own kernel, and each run's step on a thread of
    # its own (fused_cpu.FusedStep); tests turn it off to check the batched model on a CPU too
    by_run_on_cpu = True

    def __init__(self, models: list[RNNLM], configs: list[TrainConfig]):
        keys = {fusion_key(c) for c in configs}
        if len(keys) != 1:
            raise ValueError("runs of one fused pack must have the same shapes (config.SHAPE_FIELDS)")
        first = configs[0]
        self.models, self.configs = models, configs
        self.cell, self.layers, self.hidden_size = first.cell, first.num_layers, first.hidden_size
        self.variational, self.tied = first.variational_dropout, first.tie_weights
        self.vocab_size = models[0].embedding.num_embeddings
        self.device = models[0].decoder.weight.device
        self.settings = PackSettings.of(configs, self.device)
        self.embedding = self._stack(lambda m: (m.embedding, "weight"))
        self.decoder_weight = self.embedding if self.tied else self._stack(lambda m: (m.decoder, "weight"))
        self.decoder_bias = self._stack(lambda m: (m.decoder, "bias"))
        self.recurrent: list[list[torch.Tensor]] = []  # per layer: w_ih, w_hh, b_ih, b_hh
        for layer in range(self.layers):
            names = _layer_parameters(models[0], layer)[1]
            self.recurrent.append([self._stack(lambda m, i=i: (_layer_parameters(m, layer)[0], names[i]))
                                   for i in range(4)])
        if self.tied:
            for model in models:  # the decoder is the embedding, as in the solo model
                model.decoder.weight = model.embedding.weight

    def _stack(self, where) -> torch.Tensor:
        """One parameter of every run as a (K, ...) leaf tensor, each run's module pointed at its slice."""
        stacked = torch.stack([getattr(*where(model)).detach() for model in self.models]).requires_grad_()
        for index, model in enumerate(self.models):
            module, name = where(model)
            setattr(module, name, nn.Parameter(stacked.detach()[index]))
        return stacked

    @property
    def size(self) -> int:
        return len(self.models)

    def parameters(self) -> list[torch.Tensor]:
        """Each stacked tensor once (a tied decoder is the embedding)."""
        tensors = [self.embedding, *(t for layer in self.recurrent for t in layer), self.decoder_bias]
        return tensors if self.tied else tensors + [self.decoder_weight]

    def init_hidden(self, batch_size: int) -> list[torch.Tensor]:
        """Per layer h (and c for an LSTM), each (K, B, H)."""
        per_layer = 2 if self.cell is CellType.LSTM else 1
        return [self.embedding.new_zeros(self.size, batch_size, self.hidden_size)
                for _ in range(self.layers * per_layer)]

    def forward(self, inputs: torch.Tensor, hidden: list[torch.Tensor], training: bool, step: int = 0
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """inputs (T, B) word ids, the same for every run -> logits (K, T*B, V) and the new state.
        `step` seeds this step's dropout masks (ignored when not training)."""
        steps, batch = inputs.shape
        k, vocab = self.size, self.vocab_size
        settings = self.settings
        offsets = (torch.arange(k, device=inputs.device) * vocab).view(k, 1, 1)
        x = F.embedding(inputs.unsqueeze(0) + offsets, self.embedding.view(k * vocab, -1))  # (K, T, B, E)
        if training and bool((settings.word_dropout > 0).any()):
            per_type = keep_masks(self._keys(step, _SITE_WORDS), settings.word_dropout, (batch, vocab), x)  # (K, B, V)
            x = x * per_type.gather(2, inputs.t().unsqueeze(0).expand(k, -1, -1)).transpose(1, 2).unsqueeze(-1)
        x = self._drop(x, training, step, _SITE_INPUT)
        per_layer = 2 if self.cell is CellType.LSTM else 1
        new_hidden: list[torch.Tensor] = []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.recurrent):
            state = hidden[layer * per_layer:(layer + 1) * per_layer]
            mask = None
            if training and bool((settings.recurrent_dropout > 0).any()):
                mask = keep_masks(self._keys(step, _SITE_RECURRENT + layer), settings.recurrent_dropout,
                                  (batch, self.hidden_size), x)
            x, state = self._layer(x, state, w_ih, w_hh, b_ih, b_hh, mask)
            new_hidden.extend(state)
            site = _SITE_OUTPUT if layer == self.layers - 1 else _SITE_BETWEEN + layer
            x = self._drop(x, training, step, site)
        logits = _Decoder.apply(x.reshape(k, steps * batch, -1), self.decoder_weight, self.decoder_bias)
        return logits, new_hidden

    def _layer(self, x, state, w_ih, w_hh, b_ih, b_hh, mask):
        """One recurrent layer over x (K, T, B, in) for all runs: outputs (K, T, B, H) and its state."""
        if x.device.type == "cpu" and mask is None and self.by_run_on_cpu:
            return self._layer_by_run(x, state, (w_ih, w_hh, b_ih, b_hh))
        k, steps, batch, _ = x.shape
        from_input = torch.baddbmm(b_ih.unsqueeze(1), x.reshape(k, steps * batch, -1), w_ih.transpose(1, 2))
        # every step's input part at once, then split by step in one op (a slice per step would
        # have its backward fill a zero tensor of the whole sequence each time)
        from_input = from_input.view(k, steps, batch, -1).unbind(1)
        w_hh_t, b_hh = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
        h = state[0]
        outputs = []
        if self.cell is CellType.LSTM:
            c = state[1]
            for t in range(steps):
                gates = from_input[t] + torch.baddbmm(b_hh, h if mask is None else h * mask, w_hh_t)
                i, f, g, o = gates.chunk(4, dim=2)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            return torch.stack(outputs, dim=1), [h, c]
        for t in range(steps):
            x_r, x_z, x_n = from_input[t].chunk(3, dim=2)
            h_r, h_z, h_n = torch.baddbmm(b_hh, h if mask is None else h * mask, w_hh_t).chunk(3, dim=2)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
            outputs.append(h)
        return torch.stack(outputs, dim=1), [h]

    def _layer_by_run(self, x, state, weights):
        """The layer on a CPU: each run through torch's own kernel for the whole sequence, one
        call per run. (Batched, the cell is a dozen small ops per time step, and on a CPU their
        overhead costs more than the batching saves.)"""
        per_run = [w.unbind(0) for w in weights]  # (unbind: one gradient stacked per weight, not K)
        inputs, states = x.unbind(0), [s.unbind(0) for s in state]
        outputs, finals = [], []
        for k in range(self.size):
            params = tuple(w[k] for w in per_run)
            if self.cell is CellType.LSTM:
                out, h, c = torch.lstm(inputs[k], (states[0][k].unsqueeze(0), states[1][k].unsqueeze(0)), params,
                                       True, 1, 0.0, torch.is_grad_enabled(), False, False)
                finals.append((h[0], c[0]))
            else:
                out, h = torch.gru(inputs[k], states[0][k].unsqueeze(0), params, True, 1, 0.0, torch.is_grad_enabled(),
                                   False, False)
                finals.append((h[0],))
            outputs.append(out)
        return torch.stack(outputs), [torch.stack(parts) for parts in zip(*finals)]

    def _drop(self, x: torch.Tensor, training: bool, step: int, site: int) -> torch.Tensor:
        """Dropout on the non-recurrent connections, each run at its own rate: a mask per unit and
        step, or (variational) one per sequence, reused at every step."""
        rates = self.settings.dropout
        if not training or not bool((rates > 0).any()):
            return x
        k, steps, batch, width = x.shape
        if self.variational:
            return x * keep_masks(self._keys(step, site), rates, (batch, width), x).unsqueeze(1)
        return x * keep_masks(self._keys(step, site), rates, (steps, batch, width), x)

    def _keys(self, step: int, site: int) -> torch.Tensor:
        return torch.tensor(stream_keys(self.settings.seeds, step, site), dtype=torch.int64, device=self.device)

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each run's summed NLL over the chunk: (K,)."""
        k = self.size
        nll = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.flatten().repeat(k), reduction="none")
        return nll.view(k, -1).sum(dim=1)

    @torch.no_grad()
    def update(self, lrs: torch.Tensor) -> None:
        """Each run's clipping to its own global gradient norm, then SGD with its own lr and weight
        decay, as the solo trainer's step (clip_grad_norm_, then torch.optim.SGD) computes them."""
        params = self.parameters()
        settings = self.settings
        norms = torch.stack([torch.linalg.vector_norm(p.grad.flatten(1), dim=1) for p in params])  # (params, K)
        coefficient = (settings.clip / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)
        coefficient = torch.where(settings.clip > 0, coefficient, torch.ones_like(coefficient))
        decay = bool((settings.weight_decay != 0).any())
        for p in params:
            shape = (-1,) + (1,) * (p.dim() - 1)
            grad = p.grad.mul_(coefficient.view(shape))
            if decay:
                grad.addcmul_(p, settings.weight_decay.view(shape))
            p.addcmul_(grad, lrs.view(shape), value=-1.0)
            p.grad = None

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, hidden: list[torch.Tensor], lrs: torch.Tensor,
                   step: int, loss_divisor: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One step of every run on the chunk: (the state carried on, each run's summed NLL (K,))."""
        hidden = [h.detach() for h in hidden]  # truncated BPTT: the graph ends at the chunk boundary
        logits, hidden = self.forward(inputs, hidden, training=True, step=step)
        nll = self.losses(logits, targets)
        (nll.sum() / loss_divisor).backward()
        self.update(lrs)
        return hidden, nll.detach()

    @torch.no_grad()
    def summed_nll(self, source: torch.Tensor, bptt: int) -> tuple[torch.Tensor, int]:
        """Each run's NLL summed over a batchified stream (float64, (K,)) and the tokens it counts,
        from a fresh state, a short last chunk counting by its length: what `trainer.perplexity`
        sums for one run."""
        hidden = self.init_hidden(source.size(1))
        total = torch.zeros(self.size, dtype=torch.float64, device=source.device)
        tokens = 0
        for _, inputs, targets in iter_chunks(source, bptt):
            logits, hidden = self.forward(inputs, hidden, training=False)
            total += self.losses(logits, targets).double()
            tokens += targets.numel()
        return total, tokens
