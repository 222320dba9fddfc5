#!/bin/bash
# A one-node SLURM cluster on localhost, for the tests (and for trying the job scripts without a cluster).
#
#   jobs/slurm/local_cluster.sh up     # install Debian's slurmctld/slurmd/munge if missing, start them (root)
#   jobs/slurm/local_cluster.sh down   # stop them
#
# No cgroups (proctrack/linuxproc, task/none), accounting off, one partition "debug" with this machine's CPUs.
set -euo pipefail
PIDS=/run/spp-cls-slurm
mkdir -p "$PIDS"

up() {
  if [ "$(id -u)" -ne 0 ]; then echo "local_cluster.sh: needs root (it installs packages and starts daemons)" >&2; exit 2; fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  local host
  host=$(hostname -s)
  cat > /etc/slurm/slurm.conf <<CONF
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
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
  if ! pgrep -x slurmctld >/dev/null; then
    slurmctld -D >/var/log/slurm/slurmctld.stdout 2>&1 &
    echo $! >"$PIDS/slurmctld.pid"
  fi
  if ! pgrep -x slurmd >/dev/null; then
    slurmd -D >/var/log/slurm/slurmd.stdout 2>&1 &
    echo $! >"$PIDS/slurmd.pid"
  fi
  for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then sinfo; return 0; fi
    sleep 1
  done
  echo "local_cluster.sh: the node did not come up; see /var/log/slurm/" >&2
  exit 1
}

down() {
  for daemon in slurmd slurmctld; do
    if [ -f "$PIDS/$daemon.pid" ]; then kill "$(cat "$PIDS/$daemon.pid")" 2>/dev/null || true; rm -f "$PIDS/$daemon.pid"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
