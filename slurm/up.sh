#!/usr/bin/env bash
# Bring up a real one-node Slurm cluster on this machine, from Debian's packages, as root:
# munge, MariaDB + slurmdbd (so sacct works), slurmctld and slurmd, a `debug` partition and two
# fake GPUs (GRES) so GPU requests are scheduled for real.
#
# Idempotent: a second run leaves running daemons alone and only waits for the node to be idle.
# Machines without systemd (containers, CI) are fine: every daemon is started directly.
#
# Settings (environment):
#   SLURM_CPUS    CPUs the node declares (default 8, whatever the machine has: tests need several
#                 small jobs at once; slurmd is told to trust the config, not the hardware)
#   SLURM_MEM_MB  memory the node declares (default 16000); each CPU gets SLURM_MEM_MB / SLURM_CPUS
# A site's limits, to try a sweep against them (running up.sh again without one lifts it):
#   SLURM_MAX_SUBMIT_JOBS  jobs (each array task counts) one user may have queued or running: the
#                          users' MaxSubmitJobs in accounting (applied at once, no restart)
#   SLURM_MAX_ARRAY_SIZE   MaxArraySize (default 1001); SLURM_MAX_JOB_COUNT  MaxJobCount (default
#                          10000): both restart slurmctld, which keeps its queue
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=slurm/common.sh
source "$here/common.sh"

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons): sudo bash slurm/up.sh"

install_packages() {
    local missing=()
    for cmd in munged slurmctld slurmd slurmdbd mariadbd sacct; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    say "installing slurm-wlm, slurmdbd, munge, mariadb-server (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d 101: the packages must not try to start their daemons (no init system here)
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # removed however the install ends
    fi
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd slurm-client munge \
        mariadb-server >/dev/null || die "apt-get install failed"
}

write_configs() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="${SLURM_CPUS:-8}"
    mem="${SLURM_MEM_MB:-16000}"
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
    for i in 0 1; do
        # a fake GPU is a character device (like /dev/null): enough for slurmd to schedule it
        [[ -e /dev/fakegpu$i ]] || mknod /dev/fakegpu$i c 1 3
    done
    sed -e "s/@HOST@/$host/g" -e "s/@CPUS@/$cpus/g" -e "s/@MEM@/$mem/g" \
        -e "s/@MEM_PER_CPU@/$((mem / cpus))/g" -e "s/@MAX_ARRAY_SIZE@/${SLURM_MAX_ARRAY_SIZE:-1001}/g" \
        -e "s/@MAX_JOB_COUNT@/${SLURM_MAX_JOB_COUNT:-10000}/g" "$here/slurm.conf.in" >/etc/slurm/slurm.conf.new
    install_if_changed /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf 644
    cp "$here/gres.conf" /etc/slurm/gres.conf.new
    install_if_changed /etc/slurm/gres.conf.new /etc/slurm/gres.conf 644
    sed -e "s/@HOST@/$host/g" "$here/slurmdbd.conf.in" >/etc/slurm/slurmdbd.conf.new
    install_if_changed /etc/slurm/slurmdbd.conf.new /etc/slurm/slurmdbd.conf 600
}

start_munge() {
    running munged && return
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || fail_with_log munged /var/log/munge/munged.log
    wait_for "munge to answer" 20 bash -c 'munge -n | unmunge >/dev/null' || fail_with_log munged /var/log/munge/munged.log
}

start_mariadb() {
    if ! running mariadbd; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null 2>&1
        say "starting mariadb"
        nohup mysqld_safe --user=mysql >/var/log/slurm/mariadb-start.log 2>&1 &
    fi
    wait_for "mariadb to answer" 60 mariadb-admin ping --silent || fail_with_log mariadb /var/log/slurm/mariadb-start.log
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "could not create the accounting database"
}

# restart_if_changed NAME: a daemon started before its config changed reads the new one only
# on a restart (`scontrol reconfigure` does not apply a node's CPUs, memory or GRES)
restart_if_changed() {
    if [[ $configs_changed -eq 1 ]] && running "$1"; then
        say "config changed: restarting $1"
        pkill -x "$1" || true
        wait_for "$1 to stop" 30 bash -c "! pgrep -x $1" || die "$1 did not stop"
    fi
}

start_slurmdbd() {
    restart_if_changed slurmdbd
    if ! running slurmdbd; then
        say "starting slurmdbd"
        slurmdbd || fail_with_log slurmdbd /var/log/slurm/slurmdbd.log
    fi
    wait_for "slurmdbd to answer" 60 sacctmgr -n list cluster || fail_with_log slurmdbd /var/log/slurm/slurmdbd.log
    # the cluster must exist in the database before slurmctld registers with it
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx ptbjobs; then
        sacctmgr -i add cluster ptbjobs >/dev/null
    fi
}

start_slurmctld() {
    restart_if_changed slurmctld
    if ! running slurmctld; then
        say "starting slurmctld"
        slurmctld || fail_with_log slurmctld /var/log/slurm/slurmctld.log
    fi
    wait_for "slurmctld to answer" 60 scontrol ping || fail_with_log slurmctld /var/log/slurm/slurmctld.log
    # an account and the current user in it, so jobs are accounted (and sacct lists them)
    sacctmgr -n -P list account format=account | grep -qx ptbjobs || sacctmgr -i add account ptbjobs >/dev/null
    local user
    for user in root ${SUDO_USER:-}; do
        sacctmgr -n -P list user format=user | grep -qx "$user" || sacctmgr -i add user "$user" account=ptbjobs >/dev/null
    done
    apply_submit_limit
}

# apply_submit_limit: each user's MaxSubmitJobs as SLURM_MAX_SUBMIT_JOBS says, or none (-1 lifts it)
apply_submit_limit() {
    local want="${SLURM_MAX_SUBMIT_JOBS:-}" user have
    [[ -z $want || $want =~ ^[1-9][0-9]*$ ]] || die "SLURM_MAX_SUBMIT_JOBS must be a whole number > 0, got '$want'"
    for user in root ${SUDO_USER:-}; do
        have="$(sacctmgr -n -P show assoc where user="$user" format=MaxSubmit | head -n 1)"
        [[ $have == "$want" ]] && continue
        sacctmgr -i modify user "$user" set MaxSubmitJobs="${want:--1}" >/dev/null \
            || die "could not set MaxSubmitJobs of $user"
        say "MaxSubmitJobs of $user: ${want:-no limit}"
    done
}

start_slurmd() {
    restart_if_changed slurmd
    if ! running slurmd; then
        say "starting slurmd"
        slurmd || fail_with_log slurmd /var/log/slurm/slurmd.log
    fi
    local host
    host="$(hostname -s)"
    # a node that was drained or down (e.g. by an earlier crash) is put back in service
    if sinfo -h -n "$host" -o %T 2>/dev/null | grep -qE 'drain|down'; then
        scontrol update nodename="$host" state=resume || true
    fi
    wait_for "node $host to be idle" 60 bash -c "sinfo -h -n $host -o %T | grep -qE '^(idle|mixed|allocated)'" \
        || fail_with_log slurmd /var/log/slurm/slurmd.log
}

install_packages
configs_changed=0
write_configs
start_munge
start_mariadb
start_slurmdbd
start_slurmctld
start_slurmd
say "cluster up: $(sinfo -h -o '%P %D node(s) %T, %c CPUs, gres %G')"
