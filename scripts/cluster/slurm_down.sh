#!/usr/bin/env bash
# Stop what slurm_up.sh started (by its pid files), in reverse order; nothing else.
set -uo pipefail
. "$(dirname "$0")/common.sh"
MARK="# written by memrepro scripts/cluster/slurm_up.sh"
if alive "$PIDS/slurmctld.pid"; then   # scancel blocks ~15 s retrying when slurmctld is gone
  timeout 10 scancel --quiet --user "$(id -un)" 2>/dev/null || true
fi
stop_pidfile slurmd    "$PIDS/slurmd.pid"
stop_pidfile slurmctld "$PIDS/slurmctld.pid"
stop_pidfile slurmdbd  "$PIDS/slurmdbd.pid"
stop_pidfile mariadbd  "$PIDS/mariadbd.pid"
stop_pidfile munged    "$PIDS/munged.pid"
for f in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
  [ -e "$f" ] && grep -qF "$MARK" "$f" && rm -f "$f"
done
lap "slurm down"
