"""One training run: its config, the PTB data, the model, the trainer, checkpoints and the run
folder it keeps. Knows nothing of sweeps or schedulers."""
