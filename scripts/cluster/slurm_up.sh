#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the slurm profile and for CI:
# Debian's slurm-wlm + munge, and slurmdbd + MariaDB so that `sacct` works (the Snakemake
# slurm executor polls job states with sacct; without accounting it waits forever, silently).
# Run as root on Debian 12. About 5 s once the packages are installed.
#
#   MEMREPRO_CLUSTER_STATE  where state, logs and pid files go (default /tmp/memrepro-cluster)
#   SLURM_CPUS              CPUs the node advertises (default: 2 x nproc, so that a small box
#                           runs a few one-thread cells at once)
#
# It writes /etc/slurm/slurm.conf (the executor's job steps drop SLURM_CONF, so the config must
# sit at the default path) and refuses to replace one it did not write.
# Stop with slurm_down.sh: it stops exactly the daemons this script started.
set -euo pipefail
. "$(dirname "$0")/common.sh"
MARK="# written by memrepro scripts/cluster/slurm_up.sh"
S=$STATE/slurm; M=$STATE/mysql
SLURM_CPUS=${SLURM_CPUS:-$(( 2 * $(nproc) ))}

[ "$(id -u)" = 0 ] || die "run as root (it starts munged, slurmdbd, slurmctld and slurmd)"
if alive "$PIDS/slurmctld.pid"; then echo "slurm is already up (pid $(cat "$PIDS/slurmctld.pid"))"; exit 0; fi
if [ -e /etc/slurm/slurm.conf ] && ! grep -qF "$MARK" /etc/slurm/slurm.conf; then
  die "/etc/slurm/slurm.conf exists and was not written by memrepro: this machine has its own Slurm; use it (see README 'Cluster run') instead of a test cluster"
fi
apt_install slurm-wlm munge slurmdbd mariadb-server bc
lap "packages"
mkdir -p "$S/ctld" "$S/d" "$S/log" /etc/slurm

# ---- munge: reuse a running munged, otherwise start our own ---------------------
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  wait_for 10 bash -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$PIDS/munged.pid"
fi
lap "munge"

# ---- slurm.conf -------------------------------------------------------------------
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
OVR=""; [ "$SLURM_CPUS" -gt "$(nproc)" ] && OVR="SlurmdParameters=config_overrides"
cat > /etc/slurm/slurm.conf <<CONF
$MARK
ClusterName=memrepro
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobContainerType=job_container/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# the executor always passes --mem; CR_Core keeps memory from limiting placement
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/d
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
InactiveLimit=0
KillWait=5
Waittime=0
$OVR
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$SLURM_CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

# ---- accounting: a private MariaDB on loopback + slurmdbd ---------------------------
install -d -o mysql -g mysql "$M" "$M/data" "$M/run"
[ -d "$M/data/mysql" ] || mariadb-install-db --user=mysql --datadir="$M/data" --skip-test-db >"$M/install.log" 2>&1
nohup mariadbd --user=mysql --datadir="$M/data" --socket="$M/run/mysql.sock" --port=3307 \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$M/run/mysql.pid" \
    --log-error="$M/run/mysql.err" >/dev/null 2>&1 &
echo $! > "$PIDS/mariadbd.pid"
wait_for 60 mariadb -S "$M/run/mysql.sock" -e 'select 1'
mariadb -S "$M/run/mysql.sock" -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
lap "mariadb"
cat > /etc/slurm/slurmdbd.conf <<CONF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$S/log/slurmdbd.log
PidFile=$S/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf
slurmdbd
wait_for 30 test -s "$S/slurmdbd.pid"; cp "$S/slurmdbd.pid" "$PIDS/slurmdbd.pid"
wait_for 60 sacctmgr -n show cluster
lap "slurmdbd"

# ---- controller + node -----------------------------------------------------------------
slurmctld
wait_for 30 test -s "$S/slurmctld.pid"; cp "$S/slurmctld.pid" "$PIDS/slurmctld.pid"
start_slurmd() {
  rm -f "$S/slurmd.pid"
  slurmd -N localhost
  wait_for 30 test -s "$S/slurmd.pid"; cp "$S/slurmd.pid" "$PIDS/slurmd.pid"
}
node_idle() { [ "$(sinfo -h -n localhost -o %T)" = idle ]; }
diagnose() { # what a failed bring-up leaves for whoever reads the CI log (never fails itself)
  echo "---- node state: $(sinfo -h -n localhost -o '%T (%E)' 2>&1)"
  { scontrol show node localhost 2>&1 | sed 's/^/  /'; } || true
  if alive "$PIDS/slurmd.pid"; then echo "---- slurmd is running"; else echo "---- slurmd is NOT running"; fi
  for f in slurmd slurmctld; do
    echo "---- $S/log/$f.log (last 25 lines)"; tail -25 "$S/log/$f.log" 2>&1 || true
  done
}
start_slurmd
# A node that has not registered in 60 s: show why, then restart slurmd once (a drained or
# down node is resumed; "Invalid node state" from resume means it never registered).
if ! wait_for 60 node_idle; then
  diagnose >&2
  echo "slurm_up: the node is not idle after 60 s; restarting slurmd once" >&2
  stop_pidfile slurmd "$PIDS/slurmd.pid"
  start_slurmd
  scontrol update nodename=localhost state=resume 2>/dev/null || true
  wait_for 60 node_idle || { diagnose >&2; die "the node never became idle; see $S/log/"; }
fi
wait_for 60 sacct -n
lap "slurmctld + slurmd idle"

# ---- a job goes through and is accounted ------------------------------------------------
J=$(sbatch --parsable -o "$S/check-%j.out" --wrap 'echo check-ok')
wait_for 60 grep -q check-ok "$S/check-$J.out" || die "a test job did not run; see $S/log/"
lap "test job ran (job $J)"
echo "slurm up: partition debug, node localhost with $SLURM_CPUS CPUs; logs in $S/log"
