"""The training step on fixed buffers, captured once in a CUDA graph and replayed.

A 2 x 200 model on a batch of 20 leaves a GPU idle most of the time it is launched: one step is a few
hundred small kernels, and the host needs longer to launch them than the GPU to run them. Captured
in a CUDA graph, the whole step (forward, backward, clipping, the SGD update, carrying the hidden
state, adding the loss to the epoch's total) is one launch. A graph replays on fixed memory, so the
step reads its chunk, its hidden state and writes the loss total through buffers that never move:

    chunk (T, B) --copy--> inputs/targets --+
    hidden state <--copy-- new hidden  <----+-- forward, backward, clip, p -= lr * (grad + wd * p)
    epoch_nll    <--add--- the chunk's summed NLL

What changes between replays goes through those buffers; what a graph cannot change (the shapes,
the learning rate as a number) makes a new capture: the short last chunk of an epoch runs eagerly,
and a new learning rate (once per epoch at most) is captured again, which takes milliseconds.
Reseeding the RNG makes cuDNN rebuild its dropout state in new memory that a live graph would not
see, so a restored state (`invalidate`) drops the graph and warms up again before the next capture.

A capture that fails leaves PyTorch's allocator and RNG half in capture mode (torch/cuda/graphs.py
ends the capture before it restores the stream, and the allocator's pool is never closed), so the
process cannot safely go on training eagerly: the run stops with one line that says why and how to
resume without the graph. Nothing of the failed step has run, and it is at most a few steps after a
checkpoint (captures happen in a session's first steps and at the start of an epoch).

The same body runs eagerly where there is no capture (on CPU, and for the first steps on a GPU,
which warm up the libraries' workspaces before capture). Run eagerly it computes exactly what the
trainer's plain step computes, operation for operation, which is how it is tested without a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptbjobs.core.errors import PtbjobsError, first_line
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.model import RNNLM, Hidden

# Eager steps before the first capture: cuBLAS and cuDNN create their handles and workspaces on
# first use, which must not happen inside a capture (PyTorch's docs warm up on a side stream too).
WARMUP_STEPS = 3


class GraphCaptureError(PtbjobsError):
    """The training step could not be captured as a CUDA graph."""


class StaticStep:
    """One full-length training step on fixed buffers; `capture=True` (CUDA only) replays it as
    a CUDA graph, otherwise it runs eagerly. Plain SGD, as the trainer's config defines it."""

    def __init__(self, model: RNNLM, config: TrainConfig, epoch_nll: torch.Tensor, capture: bool):
        self.model = model
        self.params = list(model.parameters())
        self.clip = config.clip
        self.weight_decay = config.weight_decay
        device = epoch_nll.device
        self.inputs = torch.zeros(config.bptt, config.batch_size, dtype=torch.long, device=device)  # (T, B)
        self.loss_divisor = config.loss_scale.divisor(self.inputs)
        self.targets = torch.zeros_like(self.inputs)
        self.hidden: Hidden = model.init_hidden(config.batch_size)
        self.epoch_nll = epoch_nll  # the trainer's running total, added to in place
        self.capture = capture
        self.captures = 0
        self.replays = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_lr: float | None = None
        self._warmup_left = WARMUP_STEPS if capture else 0
        # captured on a stream of the run's own device: the default capture stream is made on the
        # current device, and work on another device's tensors would go uncaptured (an empty graph)
        self._capture_stream = torch.cuda.Stream(device) if capture else None

    def invalidate(self) -> None:
        """Forget the graph and warm up again before the next capture: after the RNG was reseeded
        or a checkpoint restored (cuDNN's dropout state then moves to new memory)."""
        self._graph, self._graph_lr = None, None
        self._warmup_left = WARMUP_STEPS if self.capture else 0

    def fits(self, inputs: torch.Tensor) -> bool:
        return inputs.shape == self.inputs.shape

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, hidden: Hidden, lr: float) -> Hidden:
        """Train on one full-length chunk from `hidden`; returns the new hidden state (which is
        this step's own buffers: pass them back in and nothing is copied)."""
        self.inputs.copy_(inputs)
        self.targets.copy_(targets)
        if hidden is not self.hidden:  # a fresh epoch, a resumed state, or an eager step in between
            with torch.no_grad():
                for buffer, value in zip(self.hidden, hidden):
                    buffer.copy_(value)
        if not self.capture:
            self._eager(lr)
        elif self._warmup_left:
            self._warm_up(lr)
            self._warmup_left -= 1
        else:
            self._replay(lr)
        return self.hidden

    def _body(self, lr: float) -> None:
        logits, new_hidden = self.model(self.inputs, self.hidden)  # (T, B, V)
        nll = F.cross_entropy(logits.flatten(0, 1), self.targets.flatten(), reduction="sum")
        (nll / self.loss_divisor).backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        with torch.no_grad():
            # torch.optim.SGD's own update without momentum, the same calls it makes
            grads = [p.grad for p in self.params]
            if self.weight_decay != 0.0:
                grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
            torch._foreach_add_(self.params, grads, alpha=-lr)
            for buffer, value in zip(self.hidden, new_hidden):
                buffer.copy_(value)
            self.epoch_nll += nll.detach().double()

    def _eager(self, lr: float) -> None:
        self.model.zero_grad(set_to_none=True)
        self._body(lr)

    def _warm_up(self, lr: float) -> None:
        side = torch.cuda.Stream(self.inputs.device)
        side.wait_stream(torch.cuda.current_stream(self.inputs.device))
        with torch.cuda.stream(side):
            self._eager(lr)
        torch.cuda.current_stream(self.inputs.device).wait_stream(side)

    def _replay(self, lr: float) -> None:
        if self._graph is None or self._graph_lr != lr:
            try:
                self._capture(lr)
            except Exception as exc:  # an op the graph cannot hold; see the module's docstring
                # the end of the capture fails too and raises its own error; the cause is the context
                cause = exc.__context__ if exc.__context__ is not None else exc
                raise GraphCaptureError(f"the training step could not be captured as a CUDA graph ({first_line(cause)})",
                                        "run it again with --no-cuda-graph (cuda_graph = false in a grid): it resumes "
                                        "from its last checkpoint") from exc
        self._graph.replay()
        self.replays += 1

    def _capture(self, lr: float) -> None:
        self._graph = None  # the previous learning rate's graph and its memory go first
        # gradients must not exist yet: backward inside the capture then allocates them from the
        # graph's memory, and every replay writes them afresh instead of adding to them
        self.model.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._capture_stream):
            self._body(lr)
        self._graph, self._graph_lr = graph, lr
        self.captures += 1
