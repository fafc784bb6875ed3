"""Seeds of one config epoch by epoch, as the markdown table of a three-seed section of this README.

`ptbjobs report` gives the mean and spread of each run's end; this shows when the seeds got there:
each seed's validation perplexity per epoch, their mean and sample standard deviation (n - 1, as
the report's ±), and the lr (from the first file); then each run's best valid and test ppl, and
their mean and standard deviation, which is what `ptbjobs report` gives for seeds of one sweep, here
for runs from any sweep or machine.

    python analysis/pilots/seeds_table.py "seed 1=metrics.jsonl" "seed 2=metrics.jsonl" ...

The table holds the epochs every run has reached.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from compare_table import read_metrics  # this folder, beside the script


def table(runs: list[tuple[str, Path]]) -> list[str]:
    curves = [read_metrics(path)[0] for _, path in runs]
    shared = sorted(set.intersection(*(set(curve) for curve in curves)))
    lines = ["| epoch | lr | " + " | ".join(f"{label}: valid" for label, _ in runs) + " | mean | std |",
             "|---:|---:|" + "---:|" * len(runs) + "---:|---:|"]
    for epoch in shared:
        valid = [curve[epoch]["valid_ppl"] for curve in curves]
        cells = [str(epoch), f"{curves[0][epoch]['lr']:.4g}", *(f"{v:.2f}" for v in valid),
                 f"{statistics.mean(valid):.2f}", f"{statistics.stdev(valid):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(runs: list[tuple[str, Path]]) -> list[str]:
    """Each finished run's best valid (the report's result) and test ppl, then their mean ± std."""
    finals = [(label, read_metrics(path)[1]) for label, path in runs]
    lines = [f"- {label}: " + (f"best valid {final['best_valid_ppl']:.2f} (epoch {final['best_epoch']}), "
                               f"test {final['test_ppl']:.2f}" if final else "unfinished") for label, final in finals]
    ended = [final for _, final in finals if final]
    if len(ended) > 1:
        valid, test = ([final[key] for final in ended] for key in ("best_valid_ppl", "test_ppl"))
        lines.append(f"- mean over {len(ended)}: valid {statistics.mean(valid):.2f} ± {statistics.stdev(valid):.2f}, "
                     f"test {statistics.mean(test):.2f} ± {statistics.stdev(test):.2f}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in spec for spec in argv):
        print("usage: seeds_table.py LABEL=METRICS.jsonl LABEL=METRICS.jsonl [...]", file=sys.stderr)
        return 2
    runs = [(label, Path(path)) for label, path in (spec.split("=", 1) for spec in argv)]
    print("\n".join(table(runs) + [""] + summary(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
