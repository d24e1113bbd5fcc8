#!/usr/bin/env bash
# A single-node Slurm on this machine, for tests/test_slurm.py and for trying
# profiles/slurm-local by hand. Needs root (the daemons run as root).
#
#   tests/slurm/setup_slurm.sh install      apt-get install slurm-wlm munge (Debian packages)
#   tests/slurm/setup_slurm.sh start DIR    start munged, slurmctld and slurmd with their
#                                           key, socket, state and logs in DIR (own ports);
#                                           prints the slurm.conf path last
#   tests/slurm/setup_slurm.sh stop DIR     cancel the cluster's jobs, stop exactly the
#                                           daemons `start DIR` started (their pid files)
#
# By hand:  sudo tests/slurm/setup_slurm.sh start /tmp/slurm
#           snakemake --workflow-profile profiles/slurm-local --configfile config/smoke.yaml
#           sudo tests/slurm/setup_slurm.sh stop /tmp/slurm
#
# The configuration is DIR/slurm.conf, linked from the default location
# /etc/slurm/slurm.conf as on a real cluster: the Slurm executor plugin drops SLURM_CONF
# from the environment of the `srun` it runs inside each job (snakemake-executor-plugin-
# slurm-jobstep 0.6.1 removes every SLURM_* variable but the job's identity), so a config
# anywhere else is not found there. `start` refuses (exit 3) when /etc/slurm/slurm.conf
# is a real file or a link to another live cluster; `stop` removes only its own link.
#
# The cluster: one node with this machine's CPUs and memory (from `slurmd -C`), one
# default partition, select/cons_tres with cores and memory as consumables, no GPUs
# (GRES), no accounting database (so `sacct` does not work: the executor plugin must
# use `squeue`, and MinJobAge keeps finished jobs visible to it). Finished jobs are also
# written to DIR/log/jobcomp.log (jobcomp/filetxt) so a test can list what ran.
set -euo pipefail

die() { echo "setup_slurm: $*" >&2; exit 1; }

install_packages() {
    [ "$(id -u)" = 0 ] || die "install needs root"
    command -v apt-get >/dev/null || die "no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: no mail server etc.; the daemons are not started by apt
    # where a policy-rc.d forbids it, and we start our own anyway.
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait until the command succeeds (timeout in seconds), or fail.
wait_for() {
    local timeout=$1; shift
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        (( SECONDS - t0 < timeout )) || return 1
        sleep 0.5
    done
}

show_logs() {
    local dir=$1
    for f in "$dir"/log/*.log "$dir"/munged.log; do
        [ -f "$f" ] && { echo "== $f"; tail -n 30 "$f"; }
    done >&2
}

DEFAULT_CONF=/etc/slurm/slurm.conf

# /etc/slurm/slurm.conf must be free: absent, or a link left by an earlier test cluster
# whose slurmctld is gone.
check_default_conf() {
    [ -e "$DEFAULT_CONF" ] || [ -L "$DEFAULT_CONF" ] || return 0
    if [ -L "$DEFAULT_CONF" ]; then
        local old pid
        old=$(readlink "$DEFAULT_CONF")
        if grep -qs "^# Written by tests/slurm/setup_slurm.sh" "$old"; then
            pid=$(cat "$(dirname "$old")/slurmctld.pid" 2>/dev/null || true)
            if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
                rm -f "$DEFAULT_CONF"
                return 0
            fi
            echo "setup_slurm: another test cluster is running ($old); stop it first" >&2
            exit 3
        fi
        [ -e "$old" ] || { rm -f "$DEFAULT_CONF"; return 0; }  # dangling
    fi
    echo "setup_slurm: this machine has its own Slurm configuration ($DEFAULT_CONF);" \
        "not touching it" >&2
    exit 3
}

link_conf() {
    mkdir -p "$(dirname "$DEFAULT_CONF")"
    ln -s "$1/slurm.conf" "$DEFAULT_CONF"
}

unlink_conf() {
    if [ -L "$DEFAULT_CONF" ] && [ "$(readlink "$DEFAULT_CONF")" = "$1/slurm.conf" ]; then
        rm -f "$DEFAULT_CONF"
    fi
}

start() {
    local dir=$1
    [ "$(id -u)" = 0 ] || die "start needs root (slurmd runs jobs as their user)"
    for cmd in munged mungekey slurmctld slurmd sbatch squeue sinfo; do
        command -v "$cmd" >/dev/null || die "$cmd not found (run: $0 install)"
    done
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 700 "$dir"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    [ -e "$dir/slurmctld.pid" ] && die "$dir already holds a cluster (stop it first)"
    check_default_conf

    # munge: a private key and socket, so nothing of the machine's own munge is touched.
    local key="$dir/munge.key" sock="$dir/munge.sock"
    mungekey --create --keyfile="$key" --force
    chmod 600 "$key"
    munged --key-file="$key" --socket="$sock" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" --force
    wait_for 20 sh -c "munge -S '$sock' -n | unmunge -S '$sock'" \
        || { show_logs "$dir"; die "munged did not start"; }

    # The node as slurmd sees it (exact CPUs / RealMemory, else the node is drained).
    local node host
    node=$(slurmd -C | head -n 1)
    host=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node")
    [ -n "$host" ] || die "slurmd -C gave no NodeName"
    local ctld_port slurmd_port
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

    cat >"$dir/slurm.conf" <<EOF
# Written by tests/slurm/setup_slurm.sh: a single-node test cluster.
ClusterName=pipeline-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets this much per CPU, not the whole node
DefMemPerCPU=1000
# squeue must still see finished jobs when the executor plugin polls (plugin: >= 3 x its
# first status-check delay).
MinJobAge=600
ReturnToService=2
InactiveLimit=0
KillWait=5
Waittime=0
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    link_conf "$dir"
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" || { show_logs "$dir"; die "slurmctld did not start"; }
    wait_for 30 scontrol ping || { show_logs "$dir"; die "slurmctld does not answer"; }
    slurmd -f "$SLURM_CONF" || { show_logs "$dir"; die "slurmd did not start"; }
    wait_for 60 sh -c "sinfo -h -N -o %t | grep -qx idle" \
        || { sinfo -N -l >&2 || true; show_logs "$dir"; die "the node did not become idle"; }
    echo "$SLURM_CONF"
}

stop_pid() {
    local pidfile=$1
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local t0=$SECONDS
        while kill -0 "$pid" 2>/dev/null && (( SECONDS - t0 < 15 )); do sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    local dir=$1
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
        SLURM_CONF="$dir/slurm.conf" scancel --user="$(id -un)" 2>/dev/null || true
        # give running job steps a moment to be killed through slurmd
        SLURM_CONF="$dir/slurm.conf" wait_for 15 sh -c '[ -z "$(squeue -h -t running)" ]' || true
    fi
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munged.pid"
    unlink_conf "$dir"
}

case "${1:-}" in
    install) install_packages ;;
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 {install|start DIR|stop DIR}" ;;
esac
