#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for testing the job scripts of this directory (CI runs it through
# tests/test_jobs_slurm.py). Debian/Ubuntu, as root, no systemd needed.
#
#   jobs/slurm/local_cluster.sh up       install slurmctld slurmd slurm-client munge (apt, no recommends) if missing,
#                                        write /etc/slurm/slurm.conf, start munged + slurmctld + slurmd, wait for idle
#   jobs/slurm/local_cluster.sh down     stop the daemons this script started (by their pid files), nothing else
#   jobs/slurm/local_cluster.sh status   say whether a cluster answers and whether this script started it
#
# Both `up` and `down` are idempotent: `up` on a cluster that already answers (started by this script or by anyone
# else) does nothing; `down` leaves alone daemons it did not start.
#
# The cluster: partition `debug` (default) with this machine as its one node (CPUs = nproc, no GPUs), munge auth,
# proctrack/linuxproc and task/none (no cgroups: sandboxes such as gVisor have no usable cgroup delegation), no
# accounting (use `scontrol show job`, not sacct), daemons running as root. slurmctld starts with a clean state (-c):
# jobs of an earlier session are dropped. Settings that make tests quicker than a production cluster would be:
#   KillWait=10   a job being requeued or cancelled gets SIGKILL 10 s after SIGTERM (default 30)
# A requeued job waits cred_expire+1 s (121 s, SLURM's default) before it may start again; tests that do not want
# to wait release it with `scontrol update JobId=ID StartTime=now+2` (not `now`: a start within the second of
# the requeue finds the old credential revoked, and SLURM fails the job).
set -euo pipefail

STATE_DIR=/run/spp-cls-local-slurm        # pid files of the daemons this script started
CONF=/etc/slurm/slurm.conf
MARKER="# written by spp-cls jobs/slurm/local_cluster.sh"
LOG_DIR=/var/log/slurm
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
say() { echo "local_cluster.sh: $*"; }

cluster_answers() { timeout 5 sinfo -h -o %T >/dev/null 2>&1; }

node_state() { timeout 5 sinfo -h -N -o %T 2>/dev/null | head -n1 || true; }

install_packages() {
    local missing=0 binary
    for binary in slurmctld slurmd sbatch munged; do
        command -v "$binary" >/dev/null 2>&1 || [[ -x /usr/sbin/$binary ]] || missing=1
    done
    ((missing)) || return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${PACKAGES[*]} by hand"
    say "installing ${PACKAGES[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null \
            || die "apt-get install ${PACKAGES[*]} failed"
    fi
}

# pid_alive FILE: the pid in FILE names a live process
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0  # a munged already answers (ours or not)
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --force
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged --force  # daemonizes; --force: a stale socket of a killed munged is fine
    for _ in $(seq 1 50); do
        [[ -s /run/munge/munged.pid ]] && break
        sleep 0.1
    done
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
    munge -n | unmunge >/dev/null || die "munged started but does not answer (see /var/log/munge/munged.log)"
}

write_conf() {
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        # a slurm.conf of someone else: replace it only if it is a one-node localhost cluster like this one
        grep -qE '^SlurmctldHost=[^ ]*\(127\.0\.0\.1\)' "$CONF" \
            || die "$CONF exists and is not a localhost test cluster; not touching it"
        cp "$CONF" "$CONF.bak.$(date +%s)"
    fi
    local host cpus memory_mb
    host=$(hostname -s)
    cpus=$(nproc)
    memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
    cat >"$CONF" <<CONF
$MARKER
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    if command -v sinfo >/dev/null 2>&1 && cluster_answers; then
        say "a SLURM cluster already answers; nothing to do"
        sinfo
        return 0
    fi
    install_packages
    mkdir -p "$STATE_DIR"
    start_munge
    write_conf
    # the daemons fork into the background themselves and write their pid files into $STATE_DIR
    slurmctld -c </dev/null >>"$LOG_DIR/slurmctld.stdout" 2>&1
    slurmd </dev/null >>"$LOG_DIR/slurmd.stdout" 2>&1
    local state="" deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        state=$(node_state)
        [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
        sleep 0.5
    done
    if [[ $state != idle* && $state != mix* && $state != alloc* ]]; then
        sinfo -R >&2 || true
        tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
        die "the node did not become idle (state: ${state:-no answer})"
    fi
    say "up: $(sinfo -h -o '%P %a %D %T %N')"
}

down() {
    local name pids=() jobs deadline
    if pid_alive "$STATE_DIR/slurmctld.pid"; then
        # cancel what still runs, or its slurmstepd processes outlive the daemons
        jobs=$(timeout 5 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs $jobs"
            # shellcheck disable=SC2086  # a list of job ids
            scancel $jobs || true
            deadline=$((SECONDS + 30))
            while ((SECONDS < deadline)) && [[ -n $(timeout 5 squeue -h -o %A 2>/dev/null || true) ]]; do
                sleep 0.5
            done
        fi
    fi
    for name in slurmd slurmctld munged; do
        if pid_alive "$STATE_DIR/$name.pid"; then
            pids+=("$(cat "$STATE_DIR/$name.pid")")
            kill "$(cat "$STATE_DIR/$name.pid")"
        fi
        rm -f "$STATE_DIR/$name.pid"
    done
    if ((${#pids[@]} == 0)); then
        say "no daemon started by this script is running; nothing to do"
        return 0
    fi
    local pid
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    say "down"
}

status() {
    if command -v sinfo >/dev/null 2>&1 && cluster_answers; then
        if pid_alive "$STATE_DIR/slurmctld.pid"; then
            say "up (started by this script)"
        else
            say "up (not started by this script)"
        fi
        sinfo
    else
        say "down"
        return 1
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
