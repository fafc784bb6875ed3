"""Validation perplexity per epoch of runs from different sweeps (or machines) on one figure.

`ptbjobs report` draws the runs of one sweep; a pilot is judged against runs of other sweeps, made
elsewhere, at the same epoch. This draws them together from their own metrics files:

    python analysis/pilots/compare_curves.py [--title T] OUT.png "LABEL=runs/SWEEP/RUN/metrics.jsonl" ...

A label ending in "(ref)" is drawn dashed; --title sets the figure's title. Unfinished runs are
fine: every epoch present is drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from compare_table import read_metrics  # noqa: E402  (this folder, beside the script)


def valid_curve(metrics: Path) -> tuple[list[int], list[float]]:
    epochs, _ = read_metrics(metrics)
    return sorted(epochs), [epochs[epoch]["valid_ppl"] for epoch in sorted(epochs)]


def main(argv: list[str]) -> int:
    title = ""
    if len(argv) > 1 and argv[0] == "--title":
        title, argv = argv[1], argv[2:]
    if len(argv) < 2 or any("=" not in spec for spec in argv[1:]):
        print("usage: compare_curves.py [--title T] OUT.png LABEL=METRICS.jsonl [LABEL=METRICS.jsonl ...]",
              file=sys.stderr)
        return 2
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for spec in argv[1:]:
        label, path = spec.split("=", 1)
        epochs, valid = valid_curve(Path(path))
        axis.plot(epochs, valid, marker=".", label=label, linestyle="--" if label.endswith("(ref)") else "-")
    # the early epochs (150-200 ppl) would flatten the part where the runs differ
    low = min(min(line.get_ydata()) for line in axis.get_lines())
    axis.set_ylim(low - 3, low + 45)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_title(title, fontsize=10)
    axis.set_ylabel("validation perplexity")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(argv[0], dpi=150)
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
