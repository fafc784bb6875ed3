from __future__ import annotations

import math

import pytest
import torch

from ptbjobs.core import states
from ptbjobs.core.errors import DivergedError
from ptbjobs.train import trainer as train_module
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.corpus import batchify, load_corpus
from ptbjobs.train.model import RNNLM
from ptbjobs.train.reporting import SilentReporter
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training
from ptbjobs.train.trainer import Trainer, perplexity, step_schedule_lr


def test_the_step_schedule_holds_then_halves_each_epoch():
    zaremba = TrainConfig()
    assert [step_schedule_lr(zaremba, e) for e in range(7)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]
    gru = TrainConfig(lr=0.5, decay_after=2)
    assert [step_schedule_lr(gru, e) for e in range(4)] == [0.5, 0.5, 0.25, 0.125]


def test_the_plateau_schedule_decays_only_after_an_epoch_without_a_new_best(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    scripted = iter([10.0, 9.0, 9.5, 8.0, 7.0])  # valid ppl of epochs 1-4, then test
    monkeypatch.setattr(train_module, "perplexity", lambda *args: next(scripted))
    config = tiny_config.replace(schedule="plateau", epochs=4, lr=1.0, lr_decay=0.5, decay_after=0)
    run_training(config, tmp_path / "run", tiny_corpus, handle_signals=False)
    records = RunDir(tmp_path / "run").read_metrics()
    assert [r["lr"] for r in records[:-1]] == [1.0, 1.0, 1.0, 0.5]
    assert records[-1]["best_epoch"] == 4


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = RNNLM(TrainConfig(emb_size=8, hidden_size=8), vocab_size=37)
    torch.nn.init.zeros_(model.decoder.weight)
    torch.nn.init.zeros_(model.decoder.bias)
    source = batchify(torch.randint(0, 37, (500,)), 4)
    assert perplexity(model, source, bptt=7) == pytest.approx(37.0, rel=1e-6)


def test_perplexity_weights_every_token_alike_whatever_the_chunking():
    torch.manual_seed(0)
    model = RNNLM(TrainConfig(emb_size=8, hidden_size=8), vocab_size=20)
    source = batchify(torch.randint(0, 20, (403,)), 4)  # 100 rows: the last chunk of 7 is short
    one_pass = perplexity(model, source, bptt=1000)
    assert perplexity(model, source, bptt=7) == pytest.approx(one_pass, rel=1e-5)
    # the mean of per-chunk perplexities (the classic mistake) is not the same number
    chunk_ppls = []
    hidden = model.init_hidden(4)
    model.eval()
    with torch.no_grad():
        for start in range(0, 99, 7):
            inputs, targets = source[start:start + 7], source[start + 1:start + 8][: len(source[start:start + 7])]
            inputs = inputs[: targets.size(0)]
            logits, hidden = model(inputs, hidden)
            chunk_ppls.append(math.exp(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()))
    assert sum(chunk_ppls) / len(chunk_ppls) != pytest.approx(one_pass, rel=1e-5)


def test_the_token_mean_loss_with_scaled_lr_and_clip_makes_the_same_updates(tmp_path, tiny_corpus):
    corpus = load_corpus(tiny_corpus)
    base = TrainConfig(emb_size=16, hidden_size=16, batch_size=4, bptt=5, device="cpu", clip=0.5, lr=1.0,
                       checkpoint_every_min=0)
    zaremba = Trainer(base, corpus, RunDir(tmp_path / "a"))
    token_mean = Trainer(base.replace(loss_scale="token_mean", lr=5.0, clip=0.1), corpus, RunDir(tmp_path / "b"))
    zaremba.run_steps(10)
    token_mean.run_steps(10)
    for (name, a), (_, b) in zip(zaremba.model.named_parameters(), token_mean.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_weight_decay_shrinks_each_weight_by_lr_times_decay_beyond_its_clipped_gradient_step(tmp_path, tiny_corpus):
    corpus = load_corpus(tiny_corpus)
    base = TrainConfig(emb_size=16, hidden_size=16, batch_size=4, bptt=5, device="cpu", clip=0.5, lr=0.7,
                       checkpoint_every_min=0)
    plain = Trainer(base, corpus, RunDir(tmp_path / "a"))
    decayed = Trainer(base.replace(weight_decay=0.01), corpus, RunDir(tmp_path / "b"))
    start = {name: p.detach().clone() for name, p in plain.model.named_parameters()}
    plain.run_steps(1)
    decayed.run_steps(1)  # the same initial weights and chunk, so the same clipped gradient
    for (name, a), (_, b) in zip(plain.model.named_parameters(), decayed.model.named_parameters()):
        torch.testing.assert_close(b - a, -0.7 * 0.01 * start[name], rtol=1e-3, atol=1e-7, msg=name)


def test_training_lowers_the_perplexity_and_records_every_epoch(tmp_path, tiny_corpus, tiny_config):
    final = run_training(tiny_config.replace(dropout=0.0, epochs=4), tmp_path / "run", tiny_corpus, handle_signals=False)
    records = RunDir(tmp_path / "run").read_metrics()
    assert [r["epoch"] for r in records[:-1]] == [1, 2, 3, 4]
    assert set(records[0]) == {"epoch", "lr", "train_ppl", "valid_ppl", "tokens_per_s", "elapsed_s", "steps"}
    assert records[-1] == final and final["final"] is True
    valid = [r["valid_ppl"] for r in records[:-1]]
    assert valid[-1] < valid[0]
    assert valid[-1] < 31  # better than a uniform guess over the 31 word types
    assert final["best_valid_ppl"] == min(valid)
    assert final["best_epoch"] == valid.index(min(valid)) + 1


def test_test_perplexity_is_measured_with_the_best_valid_weights(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    # epoch 2 is best; epoch 3's (worse) weights must not be the ones tested
    config = tiny_config.replace(epochs=3)
    calls = []
    real = train_module.perplexity

    def scripted(model, source, bptt, alive=None):
        value = real(model, source, bptt, alive)
        calls.append(value)
        return {1: 50.0, 2: 20.0, 3: 40.0}.get(len(calls), value)

    monkeypatch.setattr(train_module, "perplexity", scripted)
    final = run_training(config, tmp_path / "run", tiny_corpus, handle_signals=False)
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert (saved["epoch"], final["best_epoch"], final["best_valid_ppl"]) == (2, 2, 20.0)
    corpus = load_corpus(tiny_corpus)
    model = RNNLM(config, len(corpus.vocab))
    model.load_state_dict(saved["model"])
    assert final["test_ppl"] == real(model, batchify(corpus.test, config.eval_batch_size), config.bptt)


def test_a_diverging_run_stops_with_a_clear_error_and_state_diverged(tmp_path, tiny_corpus, tiny_config):
    config = tiny_config.replace(lr=1e12, clip=0.0, dropout=0.0)
    with pytest.raises(DivergedError, match="training diverged: loss is (nan|inf)"):
        run_training(config, tmp_path / "run", tiny_corpus, handle_signals=False)
    state = RunDir(tmp_path / "run").read_state()
    assert state["state"] == states.DIVERGED
    assert "diverged" in state["message"]
    with pytest.raises(DivergedError, match="diverged earlier: training diverged"):
        run_training(config, tmp_path / "run", tiny_corpus, handle_signals=False)


def test_max_steps_cuts_the_run_short_and_still_reports_valid_and_test(tmp_path, tiny_corpus, tiny_config):
    final = run_training(tiny_config.replace(max_steps=5), tmp_path / "run", tiny_corpus, handle_signals=False)
    records = RunDir(tmp_path / "run").read_metrics()
    assert len(records) == 2 and records[0]["steps"] == 5
    assert final["truncated"] is True and math.isfinite(final["test_ppl"])


def test_running_a_completed_run_again_trains_nothing(tmp_path, tiny_corpus, tiny_config):
    first = run_training(tiny_config, tmp_path / "run", tiny_corpus, handle_signals=False)
    mtime = (tmp_path / "run" / "metrics.jsonl").stat().st_mtime_ns
    assert run_training(tiny_config, tmp_path / "run", tiny_corpus, handle_signals=False) == first
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_mtime_ns == mtime


def test_a_folder_holding_another_config_is_refused(tmp_path, tiny_corpus, tiny_config):
    run_training(tiny_config.replace(max_steps=2), tmp_path / "run", tiny_corpus, handle_signals=False)
    with pytest.raises(Exception, match=r"holds a run with another config \(lr 1.0 -> 0.5\)"):
        run_training(tiny_config.replace(max_steps=2, lr=0.5), tmp_path / "run", tiny_corpus, handle_signals=False)


def test_epoch_steps_trains_only_the_first_chunks_of_every_epoch(tmp_path, tiny_corpus, tiny_config):
    run_training(tiny_config.replace(epoch_steps=7, epochs=3), tmp_path / "run", tiny_corpus, handle_signals=False)
    records = RunDir(tmp_path / "run").read_metrics()
    assert [r["steps"] for r in records[:-1]] == [7, 14, 21]
    assert records[-1]["truncated"] is False


def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path, tiny_corpus, tiny_config):
    import fcntl

    run_training(tiny_config.replace(max_steps=2), tmp_path / "run", tiny_corpus, handle_signals=False)
    (tmp_path / "run" / "state.json").unlink()  # not complete any more: it would train again
    with open(tmp_path / "run" / ".train.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Exception, match="is being trained by another process right now"):
            run_training(tiny_config.replace(max_steps=2), tmp_path / "run", tiny_corpus, handle_signals=False)


class _TickingClock:
    """time.monotonic for the trainer: one second later at every reading."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def test_the_reported_speed_stays_true_across_checkpoints(tmp_path, tiny_corpus, tiny_config, monkeypatch):
    # The clock moves one second a reading, and a step reads it one to four times (a save adds
    # readings), so every true rate lies between a quarter of a step's tokens and one step's
    # tokens a second. A rate over a segment that restarted at a checkpoint but kept the tokens
    # trained before it jumped several-fold after each save (and made `ptbjobs status`'s ETA short).
    monkeypatch.setattr(train_module, "time", _TickingClock())
    config = tiny_config.replace(checkpoint_every_steps=6)
    reported = []
    reporter = type("Recorder", (SilentReporter,), {"progress": lambda self, p: reported.append(p.tokens_per_s)})()
    trainer = Trainer(config, load_corpus(tiny_corpus), RunDir(tmp_path / "run"), reporter)
    trainer.run_steps(30)
    assert len(reported) >= 20 and trainer.global_step == 30
    tokens_per_step = config.batch_size * config.bptt
    assert max(reported) <= tokens_per_step, reported  # at most one step's tokens a second
    assert min(reported) >= tokens_per_step / 4, reported
