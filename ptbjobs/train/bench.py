"""`ptbjobs bench`: tokens/s of our training step against a plain reference loop, in one process.

The reference is written the way pytorch/examples' word_language_model trains: one `nn.LSTM` with
`num_layers=2`, token-mean cross-entropy, a hand-written SGD update over `model.parameters()`, and a
`loss.item()` (a host sync on GPU) every step. Same model shapes, same data, same device. The two
are timed in alternating rounds so that drift in the machine's speed hits both alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ptbjobs.train.config import TrainConfig
from ptbjobs.train.corpus import Corpus, batchify, chunk_starts, get_chunk, load_corpus
from ptbjobs.train.roofline import Limit, measure_limit
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.trainer import Trainer


class ReferenceModel(nn.Module):
    def __init__(self, config: TrainConfig, vocab_size: int):
        super().__init__()
        rnn = nn.LSTM if config.cell.value == "lstm" else nn.GRU
        self.encoder = nn.Embedding(vocab_size, config.emb_size)
        self.rnn = rnn(config.emb_size, config.hidden_size, config.num_layers, dropout=config.dropout)
        self.decoder = nn.Linear(config.hidden_size, vocab_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -config.init_scale, config.init_scale)

    def forward(self, inputs, hidden):
        output, hidden = self.rnn(self.encoder(inputs), hidden)
        return self.decoder(output), hidden


class ReferenceLoop:
    """The plain loop, stepping through the same batchified training stream."""

    def __init__(self, config: TrainConfig, corpus: Corpus, device: torch.device):
        torch.manual_seed(config.seed)
        self.config = config
        self.device = device
        self.model = ReferenceModel(config, len(corpus.vocab)).to(device)
        self.data = batchify(corpus.train, config.batch_size).to(device)
        self.starts = chunk_starts(self.data, config.bptt)
        self.position = 0
        self.hidden = self._zero_hidden()
        # token-mean loss: Zaremba's lr and clip scaled by bptt give the same update
        self.lr = config.lr * config.bptt
        self.clip = config.clip / config.bptt
        self.total_loss = 0.0

    def _zero_hidden(self):
        shape = (self.config.num_layers, self.config.batch_size, self.config.hidden_size)
        h = torch.zeros(shape, device=self.device)
        return (h, torch.zeros_like(h)) if isinstance(self.model.rnn, nn.LSTM) else h

    def run_steps(self, steps: int) -> int:
        """Train `steps` chunks; returns the tokens trained on."""
        tokens = 0
        for _ in range(steps):
            if self.position == len(self.starts):
                self.position, self.hidden = 0, self._zero_hidden()
            inputs, targets = get_chunk(self.data, self.starts[self.position], self.config.bptt)
            self.position += 1
            self.hidden = tuple(h.detach() for h in self.hidden) if isinstance(self.hidden, tuple) else self.hidden.detach()
            self.model.zero_grad()
            output, self.hidden = self.model(inputs, self.hidden)
            loss = F.cross_entropy(output.view(-1, output.size(-1)), targets.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            for parameter in self.model.parameters():
                parameter.data.add_(parameter.grad, alpha=-self.lr)
            self.total_loss += loss.item()
            tokens += targets.numel()
        return tokens


@dataclass
class BenchResult:
    config: TrainConfig
    device: str
    threads: int
    steps: int
    rounds: int
    ours: list[float] = field(default_factory=list)  # tokens/s per round
    reference: list[float] = field(default_factory=list)
    # on a GPU: how our step ran (CUDA graph or eager), and the eager step timed alongside
    step_mode: str = "eager"
    ours_eager: list[float] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)  # the step's matrix products alone, per precision

    @property
    def ours_tokens_per_s(self) -> float:
        return statistics.median(self.ours)

    @property
    def reference_tokens_per_s(self) -> float:
        return statistics.median(self.reference)

    @property
    def ratio(self) -> float:
        return self.ours_tokens_per_s / self.reference_tokens_per_s

    def to_dict(self) -> dict:
        return {"device": self.device, "threads": self.threads, "torch": torch.__version__,
                "cell": self.config.cell.value, "steps_per_round": self.steps, "rounds": self.rounds,
                "ours_tokens_per_s": self.ours_tokens_per_s, "reference_tokens_per_s": self.reference_tokens_per_s,
                "ratio": self.ratio, "ours_rounds": self.ours, "reference_rounds": self.reference,
                "step_mode": self.step_mode, "ours_eager_rounds": self.ours_eager,
                "limits": [{"dtype": l.dtype, "flops_per_step": l.flops_per_step, "gflops": l.gflops,
                            "tokens_per_s": l.tokens_per_s} for l in self.limits]}


def run_bench(config: TrainConfig, data_dir: Path | str | None = None, steps: int = 100, warmup: int = 20,
              rounds: int = 3, limits: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> BenchResult:
    corpus = load_corpus(data_dir)
    config = config.replace(checkpoint_every_min=0, checkpoint_every_steps=0, max_steps=0)
    with tempfile.TemporaryDirectory(prefix="ptbjobs-bench-") as scratch:
        trainer = Trainer(config, corpus, scratch_run(Path(scratch) / "ours"))
        # where our step is a CUDA graph, the same trainer without it is timed too: what the graph
        # buys. Both trainers and the reference seed the RNG when made, all before the first
        # capture, which a later reseed would invalidate (see graph_step.py).
        eager, graph_step = None, trainer.static_step
        if graph_step is not None:
            eager = Trainer(config.replace(cuda_graph=False), corpus, scratch_run(Path(scratch) / "eager"))
        reference = ReferenceLoop(config, corpus, trainer.device)
        result = BenchResult(config, str(trainer.device), torch.get_num_threads(), steps, rounds)
        time_trainer(trainer, warmup)
        if eager is not None:
            time_trainer(eager, warmup)
        reference.run_steps(warmup)
        for _ in range(rounds):
            result.ours.append(time_trainer(trainer, steps))
            if eager is not None:
                result.ours_eager.append(time_trainer(eager, steps))
            result.reference.append(timed(trainer.device, lambda: reference.run_steps(steps)))
        if graph_step is not None:
            result.step_mode = f"CUDA graph, {graph_step.captures} capture(s), {graph_step.replays:,} replays"
        if trainer.device.type != "cuda":
            result.limits = [measure_limit(config, len(corpus.vocab), trainer.device, dtype) for dtype in limits]
    return result


def scratch_run(path: Path) -> RunDir:
    run = RunDir(path)
    run.create()
    return run


def time_trainer(trainer: Trainer, steps: int) -> float:
    if trainer.chunk + steps > trainer.chunks_per_epoch:
        trainer.chunk = 0  # wrap around: a fresh epoch
    before = trainer.epoch_tokens if trainer.chunk else 0

    def work() -> int:
        trainer.run_steps(steps)
        return trainer.epoch_tokens - before

    return timed(trainer.device, work)


def timed(device: torch.device, work) -> float:
    """tokens/s of `work()`, which returns the tokens it trained on."""
    _sync(device)
    start = time.perf_counter()
    tokens = work()
    _sync(device)
    return tokens / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_result(result: BenchResult) -> str:
    c = result.config
    lines = [
        f"ptbjobs bench: {c.cell.value.upper()} {c.num_layers}x{c.hidden_size}, bptt {c.bptt}, batch {c.batch_size}, "
        f"on {result.device} ({result.threads} threads), torch {torch.__version__}; "
        f"median of {result.rounds} rounds x {result.steps} steps",
        f"  ptbjobs trainer   {result.ours_tokens_per_s:>10,.0f} tokens/s  ({result.step_mode})",
    ]
    if result.ours_eager:
        lines.append(f"  ptbjobs, eager    {statistics.median(result.ours_eager):>10,.0f} tokens/s  (--no-cuda-graph)")
    lines += [
        f"  reference loop    {result.reference_tokens_per_s:>10,.0f} tokens/s",
        f"  ratio             {result.ratio:>10.2f}x",
    ]
    if result.device.startswith("cuda"):
        # Measured there once, the products launched one by one ran slower than the whole captured
        # step (303k vs 421k tokens/s on an H200): at these shapes they time launch latency, not
        # the GPU's matrix rate, so they would bound nothing.
        lines.append("  limit              not measured on a GPU: at these shapes the step's products time kernel "
                     "launches, not the matrix rate")
    for limit in result.limits:
        lines.append(f"  limit at {limit.dtype:<9}{limit.tokens_per_s:>10,.0f} tokens/s: the step's matrix products alone "
                     f"({limit.flops_per_step / 1e9:.2f} GFLOP) at {limit.gflops:,.0f} GFLOP/s; ptbjobs at "
                     f"{_share(result.ours_tokens_per_s / limit.tokens_per_s)}, reference at "
                     f"{_share(result.reference_tokens_per_s / limit.tokens_per_s)}")
    return "\n".join(lines)


def _share(fraction: float) -> str:
    # above the limit only where that precision's products are slower than the loop's own (bf16
    # on a CPU without bf16 instructions): say how many times, not thousands of percent
    return f"{fraction:.0%} of it" if fraction <= 1 else f"{fraction:.1f}x it"
