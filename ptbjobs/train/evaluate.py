"""Perplexity of saved weights: a run folder's best.pt, or any weights file ptbjobs wrote."""

from __future__ import annotations

from pathlib import Path

from ptbjobs.core.errors import ConfigError, PtbjobsError
from ptbjobs.train.checkpoint import load_weights
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.corpus import batchify, load_corpus
from ptbjobs.train.model import RNNLM
from ptbjobs.train.trainer import perplexity, resolve_device


def evaluate_saved(target: Path, data_dir: Path | str | None = None, device: str = "auto",
                   splits: tuple[str, ...] = ("valid", "test")) -> dict[str, float | int | str]:
    """{split: perplexity} for the weights in `target` (a run folder or a .pt file)."""
    weights_path = target / "best.pt" if target.is_dir() else target
    if not weights_path.exists():
        raise ConfigError(None, f"no weights at {weights_path}",
                          "give a run folder that has finished an epoch, or a best.pt file")
    saved = load_weights(weights_path)
    if not isinstance(saved, dict) or not {"config", "model", "vocab_size", "epoch"} <= saved.keys():
        raise ConfigError(None, f"{weights_path} is not a weights file written by ptbjobs",
                          "give a run folder or its best.pt (checkpoints/ hold the resumable state, not weights)")
    config = TrainConfig.from_mapping(saved["config"], source=str(weights_path))
    corpus = load_corpus(data_dir)
    if len(corpus.vocab) != saved["vocab_size"]:
        raise PtbjobsError(f"{weights_path} was trained on a vocabulary of {saved['vocab_size']} words, "
                           f"the data in {corpus.data_dir} has {len(corpus.vocab)}",
                           "point --data-dir at the data the run was trained on")
    torch_device = resolve_device(device)
    model = RNNLM(config, saved["vocab_size"]).to(torch_device)
    model.load_state_dict(saved["model"])
    result: dict[str, float | int | str] = {"weights": str(weights_path), "epoch": saved["epoch"]}
    for split in splits:
        source = batchify(corpus.split(split), config.eval_batch_size).to(torch_device)
        result[split] = perplexity(model, source, config.bptt)
    return result
