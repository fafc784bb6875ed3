#!/usr/bin/env bash
# The GPU half of the speed evidence, in one go on a machine with one CUDA GPU (about 6 minutes on
# an H100/H200): the CUDA-graph tests, `ptbjobs bench` on the GPU (graph, eager and the plain
# reference loop in one process), then the faithful 13-epoch LSTM with and without the CUDA graph,
# one after the other, timed wall clock, with their final perplexities side by side.
#
#   bash analysis/gpu-speed/run.sh DATA_DIR OUT_DIR
#
# Runs from a checkout without installing it ("$python" -m ptbjobs, the repo on PYTHONPATH); needs
# torch with CUDA. Writes four files to OUT_DIR: speed.txt (everything a reader needs), tests.txt and
# the two runs' metrics; the run folders and their logs go to runs/gpu-speed/ (replaced each time),
# a failed run's log to OUT_DIR too. To try the script itself on a CPU in a minute:
#   PYTHON=.venv/bin/python DEVICE=cpu BENCH_STEPS=5 TRAIN_FLAGS="--epochs 1 --epoch-steps 5" bash analysis/gpu-speed/run.sh DATA OUT
set -euo pipefail
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
bench_steps=${BENCH_STEPS:-500}
read -r -a train_flags <<<"${TRAIN_FLAGS:-}"
data=${1:?usage: run.sh DATA_DIR OUT_DIR}
out=${2:?usage: run.sh DATA_DIR OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
report="$out/speed.txt"
say() { echo "$@" | tee -a "$report"; }

say "# ptbjobs GPU speed, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi")"
say "$("$python" -c 'import torch; print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())')"

say "## CUDA-graph tests"
"$python" -m pytest -q tests/train/test_graph_step.py -p no:cacheprovider >"$out/tests.txt" 2>&1 && say "passed" || say "FAILED (tests.txt)"
say "$(tail -1 "$out/tests.txt")"

say "## ptbjobs bench --device $device"
for cell in lstm gru; do
    "$python" -m ptbjobs bench --device "$device" --cell "$cell" --data-dir "$data" --steps "$bench_steps" --rounds 3 | tee -a "$report"
done

train() {  # name, extra flags...: a full faithful LSTM run, timed from the command's start to its end
    local name=$1; shift
    local start=$(date +%s.%N)
    "$python" -m ptbjobs train --device "$device" --data-dir "$data" --out "runs/gpu-speed/$name" "${train_flags[@]}" "$@" \
        >"runs/gpu-speed/$name.log" 2>&1 || { say "$name: FAILED"; cp "runs/gpu-speed/$name.log" "$out/"; return 1; }
    local end=$(date +%s.%N)
    cp "runs/gpu-speed/$name/metrics.jsonl" "$out/$name-metrics.jsonl"
    "$python" - "$out/$name-metrics.jsonl" "$name" "$start" "$end" <<'PY' | tee -a "$report"
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
final = records[-1]
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"{sys.argv[2]:<6} wall {wall:6.1f} s (command start to end; training+evaluation {final['elapsed_s']:.1f} s)"
      f"  best valid {final['best_valid_ppl']:.2f} (epoch {final['best_epoch']})  test {final['test_ppl']:.2f}"
      f"  train tokens/s (last epoch) {records[-2]['tokens_per_s']:,.0f}")
PY
}
say "## the faithful LSTM, 13 epochs, evaluation every epoch"
rm -rf runs/gpu-speed && mkdir -p runs/gpu-speed
train graph
train eager --no-cuda-graph
"$python" - "$out/graph-metrics.jsonl" "$out/eager-metrics.jsonl" <<'PY' | tee -a "$report"
import json, sys
graph, eager = ([json.loads(line) for line in open(path)][-1] for path in sys.argv[1:3])
for key in ("best_valid_ppl", "test_ppl"):
    print(f"{key}: graph {graph[key]:.3f}, eager {eager[key]:.3f}, difference {100 * (graph[key] / eager[key] - 1):+.3f}%")
PY
