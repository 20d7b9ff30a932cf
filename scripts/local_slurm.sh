#!/usr/bin/env bash
# A single-node Slurm with accounting (slurmctld + slurmd + slurmdbd on MariaDB, munge for
# authentication), from Debian's packages, for testing the sweep's Slurm launcher. Run as root:
#
#   scripts/local_slurm.sh start     # install what is missing, write configs, start the daemons
#   scripts/local_slurm.sh stop      # stop every daemon this script started
#   scripts/local_slurm.sh status    # sinfo and sacct, to see that both answer
#
# State, logs, pid files and the database live under $LOCAL_SLURM_HOME (default /tmp/local_slurm);
# slurm.conf and slurmdbd.conf go to /etc/slurm, where every Slurm command finds them (an existing
# slurm.conf that this script did not write is never replaced). The configs keep the
# node's real CPU count and memory, with no cgroups (containers rarely allow them), so jobs are
# tracked by process (proctrack/linuxproc).
set -euo pipefail

HOME_DIR=${LOCAL_SLURM_HOME:-/tmp/local_slurm}
CONF_DIR=/etc/slurm
MARKER="# written by lowlight-qat scripts/local_slurm.sh"
PACKAGES="slurm-wlm slurmdbd munge mariadb-server"

log() { echo "local_slurm: $*"; }

install_packages() {
    local missing=""
    for command in slurmctld slurmd slurmdbd munged mariadbd sacct; do
        command -v "$command" >/dev/null || missing=yes
    done
    [ -z "$missing" ] && return
    command -v apt-get >/dev/null || { echo "local_slurm: apt-get not found; install $PACKAGES yourself" >&2; exit 2; }
    log "installing $PACKAGES"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES >/dev/null
}

write_configs() {
    mkdir -p "$CONF_DIR" "$HOME_DIR"/{state,spool,log,run,db}
    if [ -f "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
        echo "local_slurm: $CONF_DIR/slurm.conf belongs to another Slurm; not replacing it" >&2
        exit 2
    fi
    local host cpus memory_mb
    host=$(hostname -s)
    cpus=$(nproc)
    memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    cat > "$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$HOME_DIR/state
SlurmdSpoolDir=$HOME_DIR/spool
SlurmctldPidFile=$HOME_DIR/run/slurmctld.pid
SlurmdPidFile=$HOME_DIR/run/slurmd.pid
SlurmctldLogFile=$HOME_DIR/log/slurmctld.log
SlurmdLogFile=$HOME_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SchedulerType=sched/backfill
# Quick turnover for tests: finished jobs leave squeue soon, killed ones get 10 s after SIGTERM.
MinJobAge=30
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$CONF_DIR/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$HOME_DIR/run/slurmdbd.pid
LogFile=$HOME_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

wait_for() {  # wait_for <what> <seconds> <command...>
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "local_slurm: $what did not come up within ${seconds}s; logs in $HOME_DIR/log" >&2
    exit 1
}

start() {
    [ "$(id -u)" = 0 ] || { echo "local_slurm: run as root" >&2; exit 2; }
    install_packages
    write_configs
    log "munge"
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null; chown munge:munge /etc/munge/munge.key; }
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- munged
        touch "$HOME_DIR/run/started_munge"  # stop ends only a munged that this script started
    fi
    wait_for munge 10 munge -n

    log "mariadb"
    if [ ! -d "$HOME_DIR/db/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$HOME_DIR/db" --auth-root-authentication-method=socket >/dev/null 2>&1
    fi
    chown -R mysql:mysql "$HOME_DIR/db"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then
        mariadbd --user=mysql --datadir="$HOME_DIR/db" --socket=/run/mysqld/mysqld.sock \
            --pid-file=/run/mysqld/mariadb.pid --skip-networking=0 --bind-address=127.0.0.1 \
            >"$HOME_DIR/log/mariadb.log" 2>&1 &
    fi
    wait_for mariadb 30 mysqladmin --socket=/run/mysqld/mysqld.sock ping

    log "slurmdbd"
    # slurmdbd connects as root over the socket (socket authentication, no password).
    [ -f "$HOME_DIR/run/slurmdbd.pid" ] && kill -0 "$(cat "$HOME_DIR/run/slurmdbd.pid")" 2>/dev/null \
        || slurmdbd
    wait_for slurmdbd 30 sacctmgr -n list cluster
    sacctmgr -i -Q add cluster local >/dev/null 2>&1 || true

    log "slurmctld and slurmd"
    [ -f "$HOME_DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$HOME_DIR/run/slurmctld.pid")" 2>/dev/null || slurmctld
    [ -f "$HOME_DIR/run/slurmd.pid" ] && kill -0 "$(cat "$HOME_DIR/run/slurmd.pid")" 2>/dev/null || slurmd
    wait_for "an idle node" 30 bash -c "sinfo -h -o %t | grep -q idle"
    wait_for "sacct" 20 sacct -n -X
    log "up (sinfo, sbatch, squeue, sacct)"
}

stop_pid_file() {
    local file=$1
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$file"
}

stop() {
    if ! grep -qsF "$MARKER" "$CONF_DIR/slurm.conf"; then
        log "no Slurm started by this script; nothing to stop"
        return
    fi
    # Jobs still on the node would otherwise outlive their slurmd.
    scancel --full --quiet --user=root 2>/dev/null || true
    stop_pid_file "$HOME_DIR/run/slurmd.pid"
    stop_pid_file "$HOME_DIR/run/slurmctld.pid"
    stop_pid_file "$HOME_DIR/run/slurmdbd.pid"
    stop_pid_file /run/mysqld/mariadb.pid
    if [ -f "$HOME_DIR/run/started_munge" ]; then
        stop_pid_file /run/munge/munged.pid
        rm -f "$HOME_DIR/run/started_munge"
    fi
    log "stopped"
}

status() {
    sinfo
    sacct -X -n | tail -5
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
