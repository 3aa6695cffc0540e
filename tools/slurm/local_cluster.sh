#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for `make test-slurm` and for trying
# `hydra/launcher=slurm` without a cluster (docs/cluster.md).
#
#   tools/slurm/local_cluster.sh start    # install (as root, if missing), configure, start, wait for srun
#   export SLURM_CONF=/tmp/normlab-slurm/slurm.conf   # what `start` prints: srun, sbatch, submitit use it
#   tools/slurm/local_cluster.sh status
#   tools/slurm/local_cluster.sh stop     # stops munged, slurmctld and slurmd by their PIDs
#
# NORMLAB_SLURM_DIR (default /tmp/normlab-slurm) holds the config, the munge key, state, PID
# files and the daemons' logs; NORMLAB_SLURM_PORT (default 6817) is slurmctld's port, slurmd
# takes the next one. Debian/Ubuntu packages: slurm-wlm and munge (installed when missing and
# running as root). Needs root: slurmd starts job steps as the submitting user.
set -euo pipefail

STATE=${NORMLAB_SLURM_DIR:-/tmp/normlab-slurm}
CTLD_PORT=${NORMLAB_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
NODE=$(hostname -s)  # Lightning and torch.distributed resolve the node by this name
TEMPLATE="$(cd "$(dirname "$0")" && pwd)/slurm.conf.in"
export SLURM_CONF="$STATE/slurm.conf"

say() { echo "local_cluster: $*" >&2; }
die() { say "$*"; exit 1; }

install_packages() {
    local missing=()
    for tool in munged slurmctld slurmd srun; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: install the packages slurm-wlm and munge (apt-get install slurm-wlm munge as root), then run this again"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install SLURM (slurmctld, slurmd, srun) and munge with this system's package manager"
    say "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    local mem_mb cpus
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # leave the OS a tenth
    mkdir -p "$STATE"/{munge,slurmctld,slurmd}
    sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$(hostname -s)|g" -e "s|@USER@|$(id -un)|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
        "$TEMPLATE" >"$SLURM_CONF"
}

start_munge() {
    local dir="$STATE/munge"
    chmod 700 "$dir"
    if [[ ! -s $dir/munge.key ]]; then
        # A fresh random key for this cluster alone (munge's own format: raw random bytes).
        head -c 1024 /dev/urandom >"$dir/munge.key"
        chmod 400 "$dir/munge.key"
    fi
    # --force: munged refuses to run as root otherwise; the key and socket are this cluster's.
    munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
}

running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for_srun() {
    local try
    for try in $(seq 1 60); do
        if timeout 30 srun -N1 -n1 -t 1 --quiet true 2>/dev/null; then
            say "up after $try tries: srun answers"
            return
        fi
        # slurmd registering with slurmctld: nothing to wait on but the next attempt.
        sleep 1
    done
    say "srun did not answer; the daemons' logs:"
    tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" "$STATE/munge/munged.log" >&2 || true
    exit 1
}

start() {
    [[ $(id -u) -eq 0 ]] || die "start needs root (slurmd starts jobs as the submitting user); run it as root or with sudo"
    install_packages
    if running "$STATE/slurmctld.pid"; then
        say "already running (stop first to restart)"
    else
        write_config
        running "$STATE/munge/munged.pid" || start_munge
        # -c: a clean start, no jobs or node states kept from an earlier cluster in $STATE.
        slurmctld -c
        slurmd -N "$NODE"
    fi
    wait_for_srun
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_daemon() {
    local pidfile=$1 pid
    running "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    # Wait for that process to exit (tail --pid blocks until it is gone), at most 60 s.
    timeout 60 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    stop_daemon "$STATE/slurmd.pid"
    stop_daemon "$STATE/slurmctld.pid"
    stop_daemon "$STATE/munge/munged.pid"
    say "stopped"
}

status() {
    local daemon
    for daemon in slurmctld.pid slurmd.pid munge/munged.pid; do
        if running "$STATE/$daemon"; then echo "${daemon%.pid}: running"; else echo "${daemon%.pid}: stopped"; fi
    done
    if running "$STATE/slurmctld.pid"; then sinfo; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
