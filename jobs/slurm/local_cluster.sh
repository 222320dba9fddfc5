#!/usr/bin/env bash
# A SLURM cluster on localhost, of one node or of several, for testing the job scripts of this directory (CI runs it
# through tests/test_jobs_slurm.py and tests/test_jobs_slurm_two_nodes.py). Debian/Ubuntu, as root, no systemd needed.
#
#   jobs/slurm/local_cluster.sh up [--nodes N]   install slurmctld slurmd slurm-client munge (apt, no recommends) if
#                                                missing, write /etc/slurm/slurm.conf for N nodes (default 1), start
#                                                munged + slurmctld + one slurmd per node, wait until all are idle
#   jobs/slurm/local_cluster.sh down             stop the daemons this script started (by their pid files), nothing
#                                                else
#   jobs/slurm/local_cluster.sh status           say whether a cluster answers and whether this script started it
#
# Both `up` and `down` are idempotent: `up` on a cluster that already answers (started by this script or by anyone
# else) does nothing, but `up --nodes N` fails if that cluster has another number of nodes (`down` it first, then
# `up` again: each `up` writes the conf afresh); `down` leaves alone daemons it did not start.
#
# The cluster: partition `debug` (default) with this machine as its one node (CPUs = nproc, no GPUs), munge auth,
# proctrack/linuxproc and task/none (no cgroups: sandboxes such as gVisor have no usable cgroup delegation), no
# accounting (use `scontrol show job`, not sacct), daemons running as root. slurmctld starts with a clean state (-c):
# jobs of an earlier session are dropped. Settings that make tests quicker than a production cluster would be:
#   KillWait=10   a job being requeued or cancelled gets SIGKILL 10 s after SIGTERM (default 30)
# A requeued job waits cred_expire+1 s (121 s, SLURM's default) before it may start again; tests that do not want
# to wait release it with `scontrol update JobId=ID StartTime=now+2` (not `now`: a start within the second of
# the requeue finds the old credential revoked, and SLURM fails the job).
#
# With --nodes N (N > 1) the nodes are node1..nodeN, each a slurmd of its own on this machine (`slurmd -N nodeI`;
# Debian builds SLURM with --enable-multiple-slurmd, `scontrol show config` says MULTIPLE_SLURMD = Yes): address
# 127.0.0.1, port 17001..., its own spool directory, pid file and log (%n in slurm.conf), and each CPUs = nproc
# (the nodes share this machine's CPUs). Only SLURM knows these names: a job that looks up its first node by name
# (Lightning does, for MASTER_ADDR) needs MASTER_ADDR=127.0.0.1 in its environment.
set -euo pipefail

STATE_DIR=/run/spp-cls-local-slurm        # pid files of the daemons this script started
CONF=/etc/slurm/slurm.conf
MARKER="# written by spp-cls jobs/slurm/local_cluster.sh"
LOG_DIR=/var/log/slurm
FIRST_PORT=17001                          # slurmd port of node1 when there are several nodes (then node2: 17002...)
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
say() { echo "local_cluster.sh: $*"; }

cluster_answers() { timeout 5 sinfo -h -o %T >/dev/null 2>&1; }

# node_states: "NAME STATE" of every node, one a line
node_states() { timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true; }

# nodes_ready COUNT: the cluster has COUNT nodes and each of them can take jobs
nodes_ready() {
    local states
    states=$(node_states)
    [[ -n $states && $(wc -l <<<"$states") -eq $1 ]] && ! grep -qvE ' (idle|mix|alloc)' <<<"$states"
}

# node_names COUNT: the NodeName of each node, one a line: this machine's name for one node, node1..nodeCOUNT else
node_names() {
    if (($1 == 1)); then hostname -s; else seq -f 'node%g' 1 "$1"; fi
}

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

# write_conf COUNT: slurm.conf for COUNT nodes
write_conf() {
    local count=$1
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        # a slurm.conf of someone else: replace it only if it is a one-node localhost cluster like this one
        grep -qE '^SlurmctldHost=[^ ]*\(127\.0\.0\.1\)' "$CONF" \
            || die "$CONF exists and is not a localhost test cluster; not touching it"
        cp "$CONF" "$CONF.bak.$(date +%s)"
    fi
    local host cpus memory_mb spool=/var/spool/slurmd slurmd_files=slurmd nodes="" name port=$FIRST_PORT
    host=$(hostname -s)
    cpus=$(nproc)
    # each node may have all of it: memory is no consumable resource here (CR_Core)
    memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    if ((count == 1)); then
        # slurmd finds its node without -N: the NodeName is this machine's name
        nodes="NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN"
    else
        # several slurmd on one machine: a port each, and spool directory, pid file and log by node name (%n)
        spool=/var/spool/slurmd-%n
        slurmd_files=slurmd-%n
        for name in $(node_names "$count"); do
            nodes+="NodeName=${name} NodeHostname=${host} NodeAddr=127.0.0.1 Port=${port} CPUs=${cpus}"
            nodes+=" RealMemory=${memory_mb} State=UNKNOWN"$'\n'
            port=$((port + 1))
        done
        nodes=${nodes%$'\n'}
    fi
    mkdir -p /etc/slurm /var/spool/slurmctld "$LOG_DIR"
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
SlurmdSpoolDir=${spool}
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/${slurmd_files}.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/${slurmd_files}.log
${nodes}
PartitionName=debug Nodes=$(node_names "$count" | paste -sd,) Default=YES MaxTime=INFINITE State=UP
CONF
}

# up [--nodes COUNT]
up() {
    local count=1 wanted=""
    if (($#)); then
        [[ $# -eq 2 && $1 == --nodes && $2 =~ ^[1-9][0-9]*$ ]] || usage
        count=$2 wanted=$2
    fi
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    if command -v sinfo >/dev/null 2>&1 && cluster_answers; then
        local answering
        answering=$(node_states | wc -l)
        if [[ -n $wanted && $answering -ne $wanted ]]; then
            die "a SLURM cluster of $answering node(s) already answers, not $wanted: \`$0 down\` it first"
        fi
        say "a SLURM cluster already answers; nothing to do"
        sinfo
        return 0
    fi
    install_packages
    mkdir -p "$STATE_DIR"
    start_munge
    write_conf "$count"
    # the daemons fork into the background themselves and write their pid files into $STATE_DIR
    slurmctld -c </dev/null >>"$LOG_DIR/slurmctld.stdout" 2>&1
    local name logs=("$LOG_DIR/slurmctld.log")
    if ((count == 1)); then
        mkdir -p /var/spool/slurmd
        slurmd </dev/null >>"$LOG_DIR/slurmd.stdout" 2>&1
        logs+=("$LOG_DIR/slurmd.log")
    else
        for name in $(node_names "$count"); do
            mkdir -p "/var/spool/slurmd-$name"  # slurmd makes it too, but only after it has looked for it
            slurmd -N "$name" </dev/null >>"$LOG_DIR/slurmd-$name.stdout" 2>&1
            logs+=("$LOG_DIR/slurmd-$name.log")
        done
    fi
    local deadline=$((SECONDS + 60))
    until nodes_ready "$count"; do
        if ((SECONDS >= deadline)); then
            sinfo -N -R >&2 || true
            tail -n 20 "${logs[@]}" >&2 || true
            die "the $count node(s) did not all become idle (states: $(node_states | paste -sd,))"
        fi
        sleep 0.5
    done
    say "up: $(sinfo -h -o '%P %a %D %T %N')"
}

down() {
    local pid_file pids=() jobs deadline
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
    # slurmd.pid of one node, slurmd-NAME.pid of each of several (with neither, the pattern stays unexpanded: a
    # file that does not exist)
    for pid_file in "$STATE_DIR"/slurmd*.pid "$STATE_DIR/slurmctld.pid" "$STATE_DIR/munged.pid"; do
        if pid_alive "$pid_file"; then
            pids+=("$(cat "$pid_file")")
            kill "$(cat "$pid_file")"
        fi
        rm -f "$pid_file"
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

usage() { echo "usage: $0 up [--nodes N] | down | status" >&2; exit 2; }

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    *) usage ;;
esac
