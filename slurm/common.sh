# Helpers shared by slurm/up.sh and slurm/down.sh.

say() { echo "slurm: $*"; }
die() { echo "slurm: error: $*" >&2; exit 1; }

running() { pgrep -x "$1" >/dev/null; }

# fail_with_log NAME LOG: a daemon did not start; show why from its log
fail_with_log() {
    echo "slurm: error: $1 did not start; the end of $2:" >&2
    tail -n 20 "$2" >&2 2>/dev/null || echo "  (no log at $2)" >&2
    exit 1
}

# wait_for WHAT SECONDS CMD...: run CMD until it succeeds, at most SECONDS
wait_for() {
    local what="$1" limit="$2"
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "slurm: gave up waiting for $what after ${limit}s" >&2
            return 1
        fi
        sleep 0.5
    done
}

# install_if_changed NEW DEST MODE: move NEW over DEST if they differ (sets configs_changed=1)
install_if_changed() {
    if cmp -s "$1" "$2"; then
        rm -f "$1"
    else
        chmod "$3" "$1"
        mv "$1" "$2"
        configs_changed=1
    fi
}
