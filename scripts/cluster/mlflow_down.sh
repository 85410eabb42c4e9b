#!/usr/bin/env bash
# Stop the MLflow server and the PostgreSQL cluster that mlflow_up.sh started; nothing else.
set -uo pipefail
. "$(dirname "$0")/common.sh"
P=$STATE/pg
# the server's uvicorn workers exit with it
stop_pidfile "mlflow server" "$PIDS/mlflow.pid"
if alive "$PIDS/postgres.pid"; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$P/data" -m fast -w stop >/dev/null && echo "stopped postgresql"
fi
rm -f "$PIDS/postgres.pid" "$STATE/tracking.env"
lap "mlflow + postgresql down"
