#!/usr/bin/env bash
# Cluster test: a one-node Slurm cluster and an MLflow server on PostgreSQL, the smoke
# configuration with one seed (config/cluster.yaml: every study, method and rule, 19 cells)
# through `--executor slurm` (profiles/slurm), every result, table, report and MLflow run
# checked (`bench verify`), the faults that need the cluster injected (`bench faults`), and
# everything this script started torn down again, whatever happens.
#
#   sudo bash scripts/cluster/test.sh          # Debian 12, root; ~10 min on 2 cores
#
#   MEMREPRO_CLUSTER_FAULTS  faults to inject on the cluster (default: scancel_job concurrent_32)
#   MEMREPRO_CLUSTER_KEEP=1  leave the cluster up afterwards (then run slurm_down.sh,
#                            mlflow_down.sh yourself)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/common.sh"
FAULTS=${MEMREPRO_CLUSTER_FAULTS:-scancel_job concurrent_32}

teardown() {
  local code=$?
  if [ "${MEMREPRO_CLUSTER_KEEP:-0}" != 1 ]; then
    bash "$HERE/mlflow_down.sh" || true
    bash "$HERE/slurm_down.sh" || true
  fi
  [ $code -eq 0 ] && echo "CLUSTER TEST PASSED" || echo "CLUSTER TEST FAILED (exit $code)"
  exit $code
}
trap teardown EXIT
trap 'exit 130' INT TERM

bash "$HERE/slurm_up.sh"
bash "$HERE/mlflow_up.sh"
. "$STATE/tracking.env"
export MLFLOW_TRACKING_URI
lap "cluster up"

CONFIGS=("$ROOT/config/smoke.yaml" "$ROOT/config/cluster.yaml")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/memrepro-cluster-test.XXXXXX")
echo "smoke configuration on Slurm in $WORK, tracking on $MLFLOW_TRACKING_URI"
# `timeout -k`: snakemake ignores a plain SIGTERM while it has jobs in the queue
cd "$WORK"
START=$(date +%Y-%m-%dT%H:%M:%S)
timeout -k 10 "${MEMREPRO_SMOKE_TIMEOUT:-2400}" snakemake --snakefile "$ROOT/Snakefile" \
  --workflow-profile "$ROOT/profiles/slurm" --configfile "${CONFIGS[@]}" \
  --jobs 4 --latency-wait 5 --slurm-init-seconds-before-status-checks 5 \
  > "$WORK/snakemake.log" 2>&1 || { tail -40 "$WORK/snakemake.log"; die "the smoke run failed; log: $WORK/snakemake.log"; }
lap "smoke run on Slurm"

# every cell went through Slurm and ended COMPLETED
cells=$(python3 -m bench plan --configfile "${CONFIGS[@]}" | wc -l)
jobs=$(grep -c "has been submitted with SLURM jobid" "$WORK/snakemake.log" || true)
bad=$(sacct -X -n -P -S "$START" -o JobID,JobName,State | grep -v "|COMPLETED$" || true)
echo "$cells cells planned; $jobs Slurm jobs submitted"
[ "$jobs" -ge "$cells" ] || die "only $jobs Slurm jobs for $cells cells: cells did not go through Slurm"
[ -z "$bad" ] || die "Slurm jobs that did not complete: $bad"

# results, tables, report and one MLflow run per cell on the PostgreSQL-backed server
(cd "$WORK" && python3 -m bench verify --configfile "${CONFIGS[@]}" --status ok)
lap "results, tables, report, MLflow runs verified"

# faults that need the cluster: a cancelled job, 32 cells against the server at once
(cd "$ROOT" && python3 -m bench faults --only $FAULTS --markdown "$WORK/faults.md")
lap "faults on the cluster"
rm -rf "$WORK"
