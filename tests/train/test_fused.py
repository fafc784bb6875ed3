"""The fused model: K runs trained as one batched model must train each run as its solo trainer
does (to float tolerance: the kernels differ), each with its own clipping, lr, weight decay and
dropout stream, and a run's results must not depend on which runs share its pack."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from ptbjobs.train import fused
from ptbjobs.train.corpus import batchify, iter_chunks, load_corpus
from ptbjobs.train.fused import FusedModel
from ptbjobs.train.fused_cpu import FusedStep
from ptbjobs.train.model import RNNLM
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.trainer import Trainer, perplexity, step_schedule_lr

STEPS = 100


@pytest.fixture(autouse=True, params=["by run", "batched"])
def path_on_cpu(request, monkeypatch):
    """Every test twice: with what a CPU runs (each run's step on its own thread, fused_cpu.py),
    and with the batched model a GPU runs."""
    monkeypatch.setattr(FusedModel, "by_run_on_cpu", request.param == "by run")
    return request.param


def _solo_losses(config, corpus, tmp_path, steps: int = STEPS) -> list[float]:
    """The summed NLL of each of the solo trainer's first `steps` steps."""
    run = RunDir(tmp_path / f"solo-{next(_FOLDERS)}")
    run.create()
    trainer = Trainer(config, corpus, run)
    losses = []
    for _ in range(steps):
        if trainer.chunk >= trainer.chunks_per_epoch:
            trainer.epoch, trainer.chunk = trainer.epoch + 1, 0  # the next epoch, without evaluating
        before = 0.0 if trainer.chunk == 0 else trainer.epoch_nll.item()  # (a new epoch starts its total at 0)
        trainer.run_steps(1)
        losses.append(trainer.epoch_nll.item() - before)
    return losses


_FOLDERS = itertools.count()


def _pack(configs, corpus) -> FusedModel:
    """Each run's solo model, initialised from its own seed as the solo trainer does, fused."""
    models = []
    for config in configs:
        torch.manual_seed(config.seed)
        models.append(RNNLM(config, len(corpus.vocab)))
    return FusedModel(models, configs)


def _fused_losses(configs, corpus, steps: int = STEPS) -> list[list[float]]:
    """Per step, each run's summed NLL, training the pack on the epoch's chunks in order, the
    state reset at each epoch's start (as the trainer does)."""
    pack = _pack(configs, corpus)
    train_step = FusedStep(pack)  # (on a CPU: each run on a thread of its own, unless batched)
    first = configs[0]
    train = batchify(corpus.train, first.batch_size)
    losses: list[list[float]] = []
    epoch = 0
    while len(losses) < steps:
        hidden = pack.init_hidden(first.batch_size)
        lrs = torch.tensor([step_schedule_lr(c, epoch) for c in configs])
        epoch += 1
        chunks = iter_chunks(train, first.bptt)
        # in segments, as the pack trainer gives them (on a CPU, several steps before the runs' threads meet)
        while segment := list(itertools.islice(chunks, min(train_step.segment_steps, steps - len(losses)))):
            segment = [(inputs, targets, len(losses) + i, first.loss_scale.divisor(inputs))
                       for i, (_, inputs, targets) in enumerate(segment)]
            hidden, nll = train_step.train_steps(segment, hidden, lrs)
            losses.extend(nll.tolist())
    train_step.close()
    return losses


def _assert_close(fused_losses: list[float], solo_losses: list[float], rel: float = 1e-4) -> None:
    for step, (a, b) in enumerate(zip(fused_losses, solo_losses)):
        assert abs(a - b) <= rel * abs(b), f"step {step}: fused {a} vs solo {b}"


def test_the_dropout_hash_is_splitmix64_in_tensor_arithmetic():
    values = [0, 1, 2, 12345678901234, -1, -(1 << 63), (1 << 63) - 1, fused._GOLDEN]
    tensor = fused.mix64(torch.tensor(values, dtype=torch.int64)).tolist()
    assert tensor == [fused._signed(fused.mix64_int(v)) for v in values]
    # splitmix64's published first output for seed 0: mix(0x9E3779B97F4A7C15)
    assert fused.mix64_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_uniforms_are_uniform_and_each_run_has_its_own_stream():
    keys = torch.tensor(fused.stream_keys([1, 2], step=0, site=2))
    draws = fused.uniforms(keys, (200, 100))
    assert draws.shape == (2, 200, 100) and 0.0 <= draws.min() and draws.max() < 1.0
    assert abs(draws.mean().item() - 0.5) < 0.01 and not torch.equal(draws[0], draws[1])
    alone = fused.uniforms(torch.tensor(fused.stream_keys([2], step=0, site=2)), (200, 100))
    assert torch.equal(alone[0], draws[1])  # run 2's stream, whatever shares its pack
    masks = fused.keep_masks(keys, torch.tensor([0.0, 0.4]), (200, 100), draws)
    assert torch.equal(masks[0], torch.ones(200, 100))  # rate 0: exactly 1, nothing dropped
    assert abs((masks[1] == 0).float().mean().item() - 0.4) < 0.01 and masks[1].max().item() == pytest.approx(1 / 0.6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_without_dropout_each_fused_run_takes_its_solo_steps(tiny_corpus, tiny_config, tmp_path, cell):
    corpus = load_corpus(tiny_corpus)
    # (a GRU at lr 1.3 on this corpus is chaotic: a rounding difference of 1e-7 at step 10 grew to
    # 1e-1 by step 40, so its runs stay at 1 and below)
    lrs = (1.0, 0.7, 1.3) if cell == "lstm" else (1.0, 0.7, 0.5)
    configs = [dataclasses.replace(tiny_config, cell=cell, dropout=0.0, seed=seed, lr=lr)
               for seed, lr in zip((1, 2, 3), lrs)]
    fused_losses = _fused_losses(configs, corpus)
    for index, config in enumerate(configs):
        _assert_close([step[index] for step in fused_losses], _solo_losses(config, corpus, tmp_path))


@pytest.mark.parametrize("setting", [{"clip": (0.05, 5.0)}, {"lr": (0.3, 2.0)}, {"weight_decay": (0.0, 0.05)},
                                     {"clip": (0.0, 0.1)}])
def test_runs_differing_only_in_one_setting_each_train_as_alone(tiny_corpus, tiny_config, tmp_path, setting):
    corpus = load_corpus(tiny_corpus)
    (name, values), = setting.items()
    configs = [dataclasses.replace(tiny_config, dropout=0.0, seed=1, **{name: value}) for value in values]
    fused_losses = _fused_losses(configs, corpus, steps=40)
    for index, config in enumerate(configs):
        _assert_close([step[index] for step in fused_losses], _solo_losses(config, corpus, tmp_path, steps=40))
    assert fused_losses[-1][0] != fused_losses[-1][1]  # the setting made a difference


@pytest.mark.parametrize("kind", [{}, {"variational_dropout": True, "tie_weights": True},
                                  {"variational_dropout": True, "recurrent_dropout": 0.3, "word_dropout": 0.2}])
def test_a_run_is_unaffected_by_the_runs_that_share_its_pack(tiny_corpus, tiny_config, kind):
    corpus = load_corpus(tiny_corpus)
    quiet = dataclasses.replace(tiny_config, seed=1, dropout=0.0, **kind)
    noisy = dataclasses.replace(tiny_config, seed=2, dropout=0.5, **kind)
    alone = _fused_losses([quiet], corpus, steps=30)
    shared = _fused_losses([quiet, noisy, dataclasses.replace(noisy, seed=3)], corpus, steps=30)
    _assert_close([step[0] for step in shared], [step[0] for step in alone], rel=1e-5)
    # and a run with dropout draws the same masks with or without pack-mates
    noisy_alone = _fused_losses([noisy], corpus, steps=30)
    _assert_close([step[1] for step in shared], [step[0] for step in noisy_alone], rel=1e-5)


def test_fused_evaluation_gives_each_runs_solo_perplexity(tiny_corpus, tiny_config):
    corpus = load_corpus(tiny_corpus)
    configs = [dataclasses.replace(tiny_config, seed=seed, dropout=0.3) for seed in (1, 2)]
    pack = _pack(configs, corpus)
    valid = batchify(corpus.valid, tiny_config.eval_batch_size)
    summed, tokens = pack.summed_nll(valid, tiny_config.bptt)
    fused_ppl = torch.exp(summed / tokens).tolist()
    for model, ppl in zip(pack.models, fused_ppl):  # the solo model reads its weights from the pack
        assert ppl == pytest.approx(perplexity(model, valid, tiny_config.bptt), rel=1e-5)


def test_runs_of_different_shapes_are_refused(tiny_corpus, tiny_config):
    corpus = load_corpus(tiny_corpus)
    with pytest.raises(ValueError, match="same shapes"):
        _pack([tiny_config, dataclasses.replace(tiny_config, hidden_size=8)], corpus)
