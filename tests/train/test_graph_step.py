"""The CUDA-graph training step. On CPU its body runs eagerly and must compute exactly what the
plain step computes; on a GPU (tests skipped without one) the replayed graph must train the same
run to the same perplexities, within the nondeterminism of cuDNN."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_same_run, comparable, interrupt_at
from ptbjobs.train.corpus import batchify, chunk_starts, load_corpus
from ptbjobs.train.graph_step import StaticStep
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training
from ptbjobs.train.trainer import Trainer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_dir(path) -> RunDir:
    run = RunDir(path)
    run.create()
    return run


def fit(config, corpus_dir, out, static: bool) -> Trainer:
    trainer = Trainer(config, load_corpus(corpus_dir), run_dir(out))
    if static:
        trainer.use_static_step(capture=False)
    trainer.fit()
    return trainer


def test_the_tiny_corpus_ends_every_epoch_with_a_short_chunk(tiny_corpus, tiny_config):
    # the tests below rely on it: the last chunk cannot go through the static step
    train = batchify(load_corpus(tiny_corpus).train, tiny_config.batch_size)
    last = chunk_starts(train, tiny_config.bptt)[-1]
    assert 0 < train.size(0) - 1 - last < tiny_config.bptt


@pytest.mark.parametrize("variant", [
    {},
    {"cell": "gru", "lr": 0.5},
    {"variational_dropout": True, "tie_weights": True},
    {"variational_dropout": True, "tie_weights": True, "recurrent_dropout": 0.25},
    {"variational_dropout": True, "tie_weights": True, "word_dropout": 0.2, "weight_decay": 1e-3},
    {"loss_scale": "token_mean", "lr": 5.0, "clip": 1.25},
    {"clip": 0.0, "dropout": 0.0},
], ids=["lstm-dropout", "gru", "variational-tied", "recurrent", "word-dropout-weight-decay", "token-mean",
        "no-clip-no-dropout"])
def test_the_static_step_run_eagerly_trains_bit_for_bit_like_the_plain_step(tmp_path, tiny_corpus, tiny_config, variant):
    config = tiny_config.replace(**variant)
    plain = fit(config, tiny_corpus, tmp_path / "plain", static=False)
    static = fit(config, tiny_corpus, tmp_path / "static", static=True)
    assert_same_run(tmp_path / "plain", tmp_path / "static")
    assert static.static_step is not None and static.static_step.captures == 0
    assert plain.global_step == static.global_step


def test_the_static_step_carries_the_hidden_state_in_its_own_buffers(tmp_path, tiny_corpus, tiny_config):
    trainer = Trainer(tiny_config, load_corpus(tiny_corpus), run_dir(tmp_path / "run"))
    trainer.use_static_step(capture=False)
    trainer.run_steps(3)
    assert trainer.hidden is trainer.static_step.hidden  # nothing copied between full-length steps
    assert all(h.abs().sum() > 0 for h in trainer.hidden)


def test_a_static_step_run_stopped_mid_epoch_resumes_to_the_plain_run(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    plain = tmp_path / "plain"
    run_training(tiny_config, plain, tiny_corpus, handle_signals=False)

    from ptbjobs.train import trainer as train

    original_init = train.Trainer.__init__

    def init_with_static_step(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.use_static_step(capture=False)

    monkeypatch.setattr(train.Trainer, "__init__", init_with_static_step)
    interrupt_at(monkeypatch, 7)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(train.TrainingInterrupted):
        run_training(tiny_config, interrupted, tiny_corpus, handle_signals=False)
    monkeypatch.undo()
    monkeypatch.setattr(train.Trainer, "__init__", init_with_static_step)
    run_training(tiny_config, interrupted, tiny_corpus, handle_signals=False)
    assert_same_run(plain, interrupted)


def test_a_failed_capture_stops_the_run_in_one_line_and_it_resumes_without_the_graph(
        tmp_path, tiny_corpus, tiny_config, monkeypatch):
    from ptbjobs.train import checkpoint
    from ptbjobs.train import trainer as train
    from ptbjobs.train.graph_step import GraphCaptureError

    config = tiny_config.replace(checkpoint_every_steps=2)
    reference = tmp_path / "plain"
    run_training(config, reference, tiny_corpus, handle_signals=False)

    # CPU stand-ins for the CUDA calls: warm-up steps run eagerly, and the capture fails the way
    # PyTorch's does: an op refuses, then ending the capture raises its own error over it
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: None)
    monkeypatch.setattr(StaticStep, "_warm_up", StaticStep._eager)

    def capture_fails(self, lr):
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")
        finally:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(StaticStep, "_capture", capture_fails)
    original_init = train.Trainer.__init__

    def init_with_graph(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.use_static_step(capture=True)

    monkeypatch.setattr(train.Trainer, "__init__", init_with_graph)
    out = tmp_path / "graph"
    with pytest.raises(GraphCaptureError) as failed:
        run_training(config, out, tiny_corpus, handle_signals=False)
    assert failed.value.message == ("the training step could not be captured as a CUDA graph "
                                    "(CUDA error: operation not permitted when stream is capturing)")
    assert "--no-cuda-graph" in failed.value.hint
    assert RunDir(out).read_state()["state"] == "FAILED"
    # the warm-up steps trained; the step whose capture failed did not
    assert checkpoint.load_latest(out / "checkpoints")[0]["global_step"] == 2
    monkeypatch.undo()
    run_training(config.replace(cuda_graph=False), out, tiny_corpus, handle_signals=False)
    assert_same_run(reference, out)


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_a_gpu_device_is_resolved_to_an_indexed_one(monkeypatch, name):
    # torch.cuda.set_device (called so that streams and graphs land on the run's GPU) refuses a
    # device without an index
    from ptbjobs.train.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device(name) == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_a_new_lr_is_captured_anew_and_a_restored_state_warms_up_again(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: None)
    monkeypatch.setattr(StaticStep, "_warm_up", lambda self, lr: calls.append(("warm-up", lr)))

    class RecordedGraph:
        def replay(self):
            calls.append("replay")

    def capture(self, lr):
        calls.append(("capture", lr))
        self._graph, self._graph_lr = RecordedGraph(), lr

    monkeypatch.setattr(StaticStep, "_capture", capture)
    trainer = Trainer(tiny_config, load_corpus(tiny_corpus), run_dir(tmp_path / "run"))
    trainer.use_static_step(capture=True)
    trainer.run_steps(4)
    trainer.lr = 0.5
    trainer.run_steps(1)
    trainer.load_state(trainer.state_dict())  # as a resume does: cuDNN's dropout state moves
    trainer.run_steps(4)
    assert calls == ([("warm-up", 1.0)] * 3 + [("capture", 1.0), "replay", ("capture", 0.5), "replay"]
                     + [("warm-up", 0.5)] * 3 + [("capture", 0.5), "replay"])


@cuda
@pytest.mark.parametrize("variant", [
    {"dropout": 0.0},
    {"cell": "gru", "lr": 0.5, "dropout": 0.0},
    {"variational_dropout": True, "tie_weights": True},
    {"variational_dropout": True, "tie_weights": True, "recurrent_dropout": 0.25},
    {"variational_dropout": True, "tie_weights": True, "word_dropout": 0.2, "weight_decay": 1e-3},
], ids=["lstm", "gru", "variational-tied-dropout", "recurrent-dropout", "word-dropout-weight-decay"])
def test_on_a_gpu_the_graph_trains_like_the_eager_loop(tmp_path, tiny_corpus, tiny_config, variant):
    config = tiny_config.replace(device="cuda", **variant)
    eager = fit(config.replace(cuda_graph=False), tiny_corpus, tmp_path / "eager", static=False)
    graph = fit(config, tiny_corpus, tmp_path / "graph", static=False)
    step = graph.static_step
    assert step is not None and step.captures >= config.epochs and step.replays > 0
    if config.dropout == 0.0:
        for a, b in zip(eager.history, graph.history):
            assert math.isclose(a["valid_ppl"], b["valid_ppl"], rel_tol=1e-4), (a, b)
    else:  # the masks may be drawn in another order inside a graph: close, not equal
        assert abs(eager.history[-1]["valid_ppl"] / graph.history[-1]["valid_ppl"] - 1) < 0.05


@cuda
def test_on_a_gpu_a_graph_run_stopped_mid_epoch_resumes_to_the_same_result(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    config = tiny_config.replace(device="cuda", dropout=0.0)
    run_training(config, tmp_path / "whole", tiny_corpus, handle_signals=False)
    interrupt_at(monkeypatch, 40)
    from ptbjobs.train.signals import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        run_training(config, tmp_path / "resumed", tiny_corpus, handle_signals=False)
    monkeypatch.undo()
    run_training(config, tmp_path / "resumed", tiny_corpus, handle_signals=False)
    whole = comparable(RunDir(tmp_path / "whole").read_metrics())
    resumed = comparable(RunDir(tmp_path / "resumed").read_metrics())
    for a, b in zip(whole, resumed):
        if "valid_ppl" in a:
            assert math.isclose(a["valid_ppl"], b["valid_ppl"], rel_tol=1e-4), (a, b)
