"""How fast a training step could be on this device: the matrix products of one step, counted and
timed on their own.

A step of the small model is almost all matrix products: the decoder (hidden x vocabulary, 200 x
10,000) forward and its two gradients dominate, then the RNN's input and recurrent products. Run
back to back with nothing else (no nonlinearities, no softmax, no optimizer), they give the time
below which no implementation of the step can go at a given precision; `ptbjobs bench` shows each
loop's tokens/s as a fraction of that limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ptbjobs.train.config import CellType, TrainConfig

GATES = {CellType.LSTM: 4, CellType.GRU: 3}


def step_matmuls(config: TrainConfig, vocab_size: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count): the products of one training step, forward and backward, as m x k @ k x n."""
    rows = config.batch_size * config.bptt  # tokens per step
    gates = GATES[config.cell] * config.hidden_size
    products = [
        # decoder: forward, gradient of its input, gradient of its weight
        (rows, config.hidden_size, vocab_size, 1),
        (rows, vocab_size, config.hidden_size, 1),
        (config.hidden_size, rows, vocab_size, 1),
    ]
    for layer in range(config.num_layers):
        inputs = config.emb_size if layer == 0 else config.hidden_size
        products += [
            # input projection, batched over the chunk: forward and its two gradients
            (rows, inputs, gates, 1), (rows, gates, inputs, 1), (inputs, rows, gates, 1),
            # recurrent projection: one small product per time step, forward and gradient of h;
            # the recurrent weight's gradient is one batched product over the chunk
            (config.batch_size, config.hidden_size, gates, 2 * config.bptt),
            (config.hidden_size, rows, gates, 1),
        ]
    return products


def step_flops(config: TrainConfig, vocab_size: int) -> float:
    return float(sum(2 * m * k * n * count for m, k, n, count in step_matmuls(config, vocab_size)))


@dataclass
class Limit:
    dtype: str
    seconds_per_step: float
    flops_per_step: float
    tokens_per_step: int

    @property
    def gflops(self) -> float:
        return self.flops_per_step / self.seconds_per_step / 1e9

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.seconds_per_step


def measure_limit(config: TrainConfig, vocab_size: int, device: torch.device, dtype: torch.dtype,
                  seconds: float = 0.3, rounds: int = 3) -> Limit:
    """Time the step's products alone: best of `rounds` rounds of about `seconds` each (at least
    one step: bf16 on a CPU without bf16 instructions takes seconds a step)."""
    products = step_matmuls(config, vocab_size)
    operands = [(torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype), count)
                for m, k, n, count in products]

    def one_step() -> None:
        for a, b, count in operands:
            for _ in range(count):
                torch.mm(a, b)

    _sync(device)
    start = time.perf_counter()
    one_step()  # also warms up the kernels
    _sync(device)
    repeats = max(1, min(50, int(seconds / max(time.perf_counter() - start, 1e-6))))
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            one_step()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return Limit(str(dtype).replace("torch.", ""), best, step_flops(config, vocab_size),
                 config.batch_size * config.bptt)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
