#!/usr/bin/env bash
# Stop the one-node cluster that slurm/up.sh started. Jobs still queued or running are lost.
#   --purge   also forget every job: the controller's state, the accounting database, the logs.
#             Job ids then start again from 1, so sweeps submitted before no longer match their jobs:
#             purge only a cluster whose sweeps you are done with.
# Stopping what is not running is harmless. The packages stay installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=slurm/common.sh
source "$here/common.sh"

[[ $(id -u) -eq 0 ]] || die "run as root: sudo bash slurm/down.sh"
purge=0
for arg in "$@"; do
    case "$arg" in
        --purge) purge=1 ;;
        *) die "unknown option $arg (use --purge or nothing)" ;;
    esac
done

stop() {
    running "$1" || return 0
    say "stopping $1"
    pkill -x "$1" || true
    wait_for "$1 to stop" 30 bash -c "! pgrep -x $1" || { pkill -9 -x "$1" || true; }
}

# Jobs first: with proctrack/linuxproc, stopping slurmd would leave their processes running (and
# holding their run folders). Cancelled, they save their state and can be resubmitted after `up`.
if running slurmctld && [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
    say "cancelling the jobs still queued or running"
    squeue -h -o %i | xargs -r scancel 2>/dev/null || true
    wait_for "the jobs to end" 60 bash -c '[[ -z "$(squeue -h -o %i)" ]]' || say "some jobs did not end in 60 s"
fi
pkill -x slurmstepd 2>/dev/null || true
stop slurmd
stop slurmctld
stop slurmdbd
if running mariadbd; then
    say "stopping mariadb"
    mariadb-admin shutdown 2>/dev/null || pkill -x mariadbd || true
    wait_for "mariadb to stop" 30 bash -c '! pgrep -x mariadbd' || true
fi
stop munged
if [[ $purge -eq 1 ]]; then
    say "purging job state, accounting database and logs"
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/*
    rm -rf /var/lib/mysql  # recreated by the next `up`
fi
say "cluster down"
