#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests of cluster=slurm (and for trying it).
#   scripts/slurm/local_cluster.sh install install Slurm and munge (Debian: slurm-wlm, munge) if missing
#   scripts/slurm/local_cluster.sh start   configure and start (exit 3 when Slurm is not installed)
#   scripts/slurm/local_cluster.sh stop
#   scripts/slurm/local_cluster.sh env     print the SLURM_CONF line to export for sbatch/squeue/sacct
# State, logs and slurm.conf live in $NEMO_LLM_SLURM_DIR (default /tmp/nemo_llm_slurm). Needs root
# (daemons run as root; no cgroups: processes are tracked by their parent).
set -euo pipefail
DIR="${NEMO_LLM_SLURM_DIR:-/tmp/nemo_llm_slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"

installed() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null
}

install() {
    if installed; then return; fi
    if ! command -v apt-get >/dev/null; then echo "no apt-get to install slurm-wlm and munge with" >&2; exit 3; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

configure() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    local cpus mem
    cpus="$(nproc)"
    mem="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))"
    cat > "$CONF" <<CONF
ClusterName=nemo_llm_local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${NEMO_LLM_SLURMCTLD_PORT:-6817}
SlurmdPort=${NEMO_LLM_SLURMD_PORT:-6818}
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

start_munge() {
    if pgrep -x munged >/dev/null; then return; fi
    mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged --force 2>/dev/null || munged --force
    else
        munged --force
    fi
}

start() {
    if ! installed; then
        echo "Slurm (slurmctld, slurmd) and munge are not installed: run $0 install" >&2
        exit 3
    fi
    configure
    start_munge
    export SLURM_CONF="$CONF"
    pkill -x slurmctld 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    sleep 1
    slurmctld -f "$CONF" -c
    slurmd -f "$CONF" -c
    for _ in $(seq 1 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "Slurm is up: export SLURM_CONF=$CONF"
            return
        fi
        sleep 1
    done
    echo "Slurm did not come up; logs in $DIR/log" >&2
    tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 4
}

stop() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
}

case "${1:-start}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
