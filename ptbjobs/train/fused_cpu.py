"""A fused pack's training step on a CPU: each run's step on a thread of its own.

On a GPU one batched model keeps the device busy where one run leaves it idle. A CPU is not idle
with one run: there the batched step only adds the overhead of its many small ops, and one process
splitting its cores over each product does less than processes side by side, one core each. So on a
CPU each run takes its step on its own thread (torch's kernels release the GIL), with its share of
the cores, as its own small model: the same code as the batched model, for a pack of one (the run's
slice of each weight, its own settings and dropout stream), its update (clipping, SGD) done in
place on its slice. The evaluation stays batched. Each run's result depends on nothing but its own
data and its thread count, so a pack still resumes exactly.

The threads take several steps each before they meet (a segment, SEGMENT_STEPS): threads that met
after every step waited each time for the slower one, and separate processes never wait (measured
on 2 cores: 4 to 15% of the pack's time). The pack looks at signals, progress and checkpoints at the
segments' ends: a run stops up to a segment later than it would alone (about a second), at a step
that is the same for every run of the pack.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import torch

from ptbjobs.train.fused import FusedModel, PackSettings

SEGMENT_STEPS = 8  # steps each run's thread takes before the threads meet (about a second on a CPU)

# One step's data: (inputs, targets, the step's number (it seeds dropout), the loss's divisor)
Chunk = tuple[torch.Tensor, torch.Tensor, int, int]


class FusedStep:
    """A fused model's training steps where they run best: on a CPU, each run on a thread of its
    own (RunThreads), SEGMENT_STEPS at a time; else the batched model's own, one at a time."""

    def __init__(self, fused: FusedModel):
        self.fused = fused
        by_run = fused.device.type == "cpu" and fused.by_run_on_cpu and fused.size > 1
        self.threads = RunThreads(fused) if by_run else None
        self.segment_steps = SEGMENT_STEPS if self.threads else 1  # the most steps train_steps should be given

    def train_steps(self, chunks: list[Chunk], hidden: list[torch.Tensor], lrs: torch.Tensor
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """FusedModel.train_step on each chunk in turn: the state carried on, and each run's
        summed NLL of each step (steps, K)."""
        if self.threads is not None:
            return self.threads.train_steps(chunks, hidden, lrs)
        losses = []
        for inputs, targets, step, divisor in chunks:
            hidden, nll = self.fused.train_step(inputs, targets, hidden, lrs, step, divisor)
            losses.append(nll)
        return hidden, torch.stack(losses)

    def close(self) -> None:
        """Let the runs' threads go (a pack rebuilt without a run that left makes a new model)."""
        if self.threads is not None:
            self.threads.close()


class RunThreads:
    """The threads of one fused model's runs, and each run's one-run view of the model."""

    def __init__(self, fused: FusedModel):
        self.fused = fused
        self.views = [_one_run_view(fused, k) for k in range(fused.size)]
        # each thread's share of this process's threads (OMP_NUM_THREADS, or torch.set_num_threads:
        # a run's rounding, and so its exact resume, depends on its thread count)
        self.threads_per_run = max(1, torch.get_num_threads() // fused.size)
        self.pool = ThreadPoolExecutor(max_workers=fused.size, thread_name_prefix="ptbjobs-run",
                                       initializer=torch.set_num_threads, initargs=(self.threads_per_run,))

    def train_steps(self, chunks: list[Chunk], hidden: list[torch.Tensor], lrs: torch.Tensor
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """FusedStep.train_steps, each run's steps (its gradients, clipping and update, on its
        slice of the weights) on its own thread, meeting after the last."""
        def one_run(k: int):
            view, state, losses = self.views[k], [h[k:k + 1] for h in hidden], []
            for inputs, targets, step, divisor in chunks:
                state = [h.detach() for h in state]  # truncated BPTT: the graph ends at the chunk boundary
                logits, state = view.forward(inputs, state, training=True, step=step)
                nll = view.losses(logits, targets)
                (nll.sum() / divisor).backward()
                view.update(lrs[k:k + 1])
                losses.append(nll.detach())
            return [h.detach() for h in state], torch.cat(losses)

        results = list(self.pool.map(one_run, range(len(self.views))))
        hidden = [torch.cat(parts) for parts in zip(*(state for state, _ in results))]
        return hidden, torch.stack([losses for _, losses in results], dim=1)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _one_run_view(fused: FusedModel, k: int) -> FusedModel:
    """Run k as a pack of one: its slice of each stacked weight as a leaf of its own (the same
    memory: the batched update moves it), and its own settings."""
    def leaf(stacked: torch.Tensor) -> torch.Tensor:
        # a tensor of its own over the slice's memory, not a view: a view shares its base's version
        # counter, and one run's update in place would fail another's backward, still running
        own = torch.empty(0, dtype=stacked.dtype, device=stacked.device)
        own.set_(stacked.untyped_storage(), stacked.storage_offset() + k * stacked.stride(0),
                 (1, *stacked.shape[1:]), stacked.stride())
        return own.requires_grad_()

    view = copy.copy(fused)
    view.models, view.configs = [fused.models[k]], [fused.configs[k]]
    view.settings = PackSettings.of(view.configs, fused.device)
    view.embedding = leaf(fused.embedding)
    view.decoder_weight = view.embedding if fused.tied else leaf(fused.decoder_weight)
    view.decoder_bias = leaf(fused.decoder_bias)
    view.recurrent = [[leaf(t) for t in layer] for layer in fused.recurrent]
    return view
