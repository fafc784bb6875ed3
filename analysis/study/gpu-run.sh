#!/usr/bin/env bash
# The study on one GPU machine held a few minutes at a time (a short interactive allocation), in
# one or more invocations of this script:
#
#   bash analysis/study/gpu-run.sh DATA_DIR OUT_DIR SECONDS            # first call
#   bash analysis/study/gpu-run.sh DATA_DIR OUT_DIR SECONDS sweeps     # first call, no speed checks
#   bash analysis/study/gpu-run.sh DATA_DIR OUT_DIR SECONDS continue   # later calls, same machine
#
# The first call measures the speed of one run alone (`ptbjobs bench` on the GPU, then the faithful
# 13-epoch LSTM timed wall clock) and runs the CUDA-graph tests that need a GPU. It starts CUDA's
# Multi-Process Service where the machine allows it (without it, processes sharing a GPU take turns;
# with it, the small kernels of several runs execute side by side), then submits launch/zaremba-small.toml and launch/beyond.toml through
# analysis/gpu_sweeps.py, every run at once. A sweep not yet on the machine is first restored from
# analysis/study/run-folders.tar.gz (or ARCHIVE), so the runs that earlier rounds finished are
# skipped (ARCHIVE=none runs every run of the grids). A later call resubmits the grids: finished
# runs are skipped, running ones are left alone, stopped ones resume from their checkpoints. Each call ends within
# SECONDS and leaves in OUT_DIR: gpu.txt (what it measured and saw), gpu-load.txt (nvidia-smi every
# 30 s), curves.txt and each sweep's results.md, and runs.tar.gz (every run folder without its
# checkpoints, for `ptbjobs report` elsewhere). If the CUDA-graph run fails, the sweeps run with
# cuda_graph = false and gpu.txt says so.
set -uo pipefail
python=${PYTHON:-python3}
device=${DEVICE:-cuda}     # DEVICE=cpu, GRIDS=launch/smoke.toml and TRAIN_FLAGS="--epochs 1 --epoch-steps 5"
read -r -a train_flags <<<"${TRAIN_FLAGS:-}"   # try the script itself on a CPU
data=${1:?usage: gpu-run.sh DATA_DIR OUT_DIR SECONDS [sweeps|continue]}
out=${2:?usage: gpu-run.sh DATA_DIR OUT_DIR SECONDS [sweeps|continue]}
budget=${3:?usage: gpu-run.sh DATA_DIR OUT_DIR SECONDS [sweeps|continue]}
mode=${4:-first}
start=$(date +%s)
mkdir -p "$out" runs/gpu-speed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
report="$out/gpu.txt"
say() { echo "$@" | tee -a "$report"; }
elapsed() { echo $(( $(date +%s) - start )); }
read -r -a grids <<<"${GRIDS:-launch/zaremba-small.toml launch/beyond.toml}"
mps_flag=runs/gpu-speed/mps-on       # remembered across calls on the same machine
mps_dirs=(CUDA_MPS_PIPE_DIRECTORY=/tmp/ptbjobs-mps CUDA_MPS_LOG_DIRECTORY=/tmp/ptbjobs-mps-log)
eager_flag=runs/gpu-speed/eager-only

say "# $mode call, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 30 >"$out/gpu-load.txt" 2>&1 &
load_pid=$!

say "$("$python" -c 'import torch; print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())')"
if [ "$mode" = first ]; then
    say "## ptbjobs bench --device $device --cell lstm (graph, eager, plain reference loop; one process)"
    timeout 150 "$python" -m ptbjobs bench --device "$device" --cell lstm --data-dir "$data" --steps "${BENCH_STEPS:-400}" --rounds 3 2>&1 | tee -a "$report"
    say "## the faithful LSTM alone (13 epochs, seed 1, evaluation every epoch), CUDA graph"
    t=$(date +%s.%N)
    if timeout 240 "$python" -m ptbjobs train --device "$device" --data-dir "$data" --out runs/gpu-speed/graph "${train_flags[@]}" \
            >runs/gpu-speed/graph.log 2>&1; then
        "$python" - runs/gpu-speed/graph/metrics.jsonl "$t" "$(date +%s.%N)" <<'PY' | tee -a "$report"
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
final, epochs = records[-1], [r for r in records if "valid_ppl" in r]
print(f"wall {float(sys.argv[3]) - float(sys.argv[2]):.1f} s from command start to end (training + evaluation "
      f"{final['elapsed_s']:.1f} s); best valid {final['best_valid_ppl']:.2f} (epoch {final['best_epoch']}), "
      f"test {final['test_ppl']:.2f}; train tokens/s by epoch: " + " ".join(f"{r['tokens_per_s']:.0f}" for r in epochs))
PY
    else
        say "FAILED: the sweeps run with cuda_graph = false; its log follows"
        tail -20 runs/gpu-speed/graph.log | tee -a "$report"
        touch "$eager_flag"
    fi
    say "## the CUDA-graph tests that need a GPU (graph vs eager, resume mid-epoch)"
    timeout 150 "$python" -m pytest -q -p no:cacheprovider tests/test_graphstep.py -k on_a_gpu >runs/gpu-speed/tests.txt 2>&1
    say "exit $?: $(tail -1 runs/gpu-speed/tests.txt)"; grep -E "^(FAILED|ERROR|E  )" runs/gpu-speed/tests.txt | head -15 | tee -a "$report"
fi
if [ "$mode" != continue ]; then
    say "## CUDA MPS"
    if command -v nvidia-cuda-mps-control >/dev/null; then
        export "${mps_dirs[@]}"
        mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
        if nvidia-cuda-mps-control -d && timeout 60 "$python" -c \
                'import torch; x = torch.ones(1 << 20, device="cuda"); assert float(x.sum()) == 1 << 20' 2>>"$report"; then
            touch "$mps_flag"; say "on: $(echo get_server_list | nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')"
        else
            echo quit | nvidia-cuda-mps-control 2>/dev/null
            say "off: the daemon or a client under it failed ($(tail -3 "$CUDA_MPS_LOG_DIRECTORY/control.log" 2>/dev/null | tr '\n' ' '))"
            unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY   # the sweeps run without it
        fi
    else
        say "off: no nvidia-cuda-mps-control on this machine"
    fi
elif [ -e "$mps_flag" ]; then
    export "${mps_dirs[@]}"
fi

if [ -e "$eager_flag" ]; then   # same sweep names and run identities (cuda_graph is resume-neutral)
    mkdir -p runs/gpu-speed/grids
    for grid in "${grids[@]}"; do
        sed '/^\[defaults\]/a cuda_graph = false' "$grid" >"runs/gpu-speed/grids/$(basename "$grid")"
    done
    grids=(runs/gpu-speed/grids/*.toml)
fi
sweeps=(); for grid in "${grids[@]}"; do sweeps+=("runs/$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["name"])' "$grid")"); done
# Earlier rounds' finished runs, from the archive of their folders: `ptbjobs submit` skips them, so
# a grid that gained rates runs only those. A sweep already on this machine is left as it is.
archive=${ARCHIVE:-analysis/study/run-folders.tar.gz}
for sweep in "${sweeps[@]}"; do
    if [ ! -e "$sweep" ] && [ -f "$archive" ] && tar tzf "$archive" "$sweep/manifest.json" >/dev/null 2>&1; then
        tar xzf "$archive" "$sweep" && say "restored $sweep from $archive: $(ls "$sweep"/*/state.json 2>/dev/null | wc -l) runs"
    fi
done
say "## sweeps (${grids[*]}), from $(elapsed) s into this call"
"$python" analysis/gpu_sweeps.py --data-dir "$data" --out "$out" --time-limit $(( budget - $(elapsed) - 40 )) "${grids[@]}" \
    2>&1 | tee -a "$report" | grep -v "valid by epoch"
say "MPS clients: $(echo get_server_list | nvidia-cuda-mps-control 2>/dev/null | tr '\n' ' ')"
kill "$load_pid" 2>/dev/null
tar czf "$out/runs.tar.gz" --exclude='*.pt' "${sweeps[@]}" runs/gpu-speed 2>>"$report"
say "call ended at $(elapsed) s"
