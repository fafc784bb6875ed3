"""ptbjobs: Zaremba-small LSTM/GRU language-model sweeps on Penn Treebank, locally or on Slurm."""

__version__ = "0.1.0"
