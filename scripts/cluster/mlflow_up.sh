#!/usr/bin/env bash
# An MLflow tracking server backed by a private PostgreSQL cluster, both on loopback.
# Run as root on Debian 12 (it installs postgresql 15 and runs it as the postgres user).
#
#   MEMREPRO_CLUSTER_STATE  state, logs, pid files (default /tmp/memrepro-cluster)
#   PGPORT       PostgreSQL port (default 5433; 5432 may be the machine's own cluster)
#   MLFLOW_PORT  server port (default 5055)
#   PYTHON       the Python that has mlflow and psycopg2 (default python3)
#
# Artifacts are proxied (--artifacts-destination): jobs need only HTTP to the server.
# Writes $MEMREPRO_CLUSTER_STATE/tracking.env with MLFLOW_TRACKING_URI for jobs to source.
# A server other machines can reach needs --host 0.0.0.0 and --allowed-hosts (see README).
set -euo pipefail
. "$(dirname "$0")/common.sh"
PGPORT=${PGPORT:-5433}; MLFLOW_PORT=${MLFLOW_PORT:-5055}; PYTHON=${PYTHON:-python3}
P=$STATE/pg; A=$STATE/artifacts; L=$STATE/mlflow-server
URI=http://127.0.0.1:$MLFLOW_PORT

[ "$(id -u)" = 0 ] || die "run as root (it installs PostgreSQL and runs it as user postgres)"
if alive "$PIDS/mlflow.pid"; then echo "mlflow server already up: $URI"; exit 0; fi
apt_install postgresql curl bc
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
"$PYTHON" -c "import mlflow, psycopg2" 2>/dev/null \
  || die "$PYTHON lacks mlflow or psycopg2: pip install -e '.[cluster]'"
lap "packages"

install -d -o postgres -g postgres "$P" "$P/run"
[ -s "$P/data/PG_VERSION" ] || runuser -u postgres -- "$PGBIN/initdb" -D "$P/data" -U postgres \
    -E UTF8 --auth-local=peer --auth-host=scram-sha-256 >"$P/initdb.log"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$P/data" -l "$P/postgres.log" -w -t 60 \
  -o "-p $PGPORT -k $P/run -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
head -1 "$P/data/postmaster.pid" > "$PIDS/postgres.pid"
runuser -u postgres -- psql -h "$P/run" -p "$PGPORT" -v ON_ERROR_STOP=1 -q <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='mlflow') THEN
    CREATE ROLE mlflow LOGIN PASSWORD 'mlflowpw'; END IF; END \$\$;
SQL
runuser -u postgres -- psql -h "$P/run" -p "$PGPORT" -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1 \
  || runuser -u postgres -- createdb -h "$P/run" -p "$PGPORT" -O mlflow mlflow
lap "postgresql on 127.0.0.1:$PGPORT"

mkdir -p "$A" "$L"
# the server migrates the schema once before its workers start: concurrent cells are safe
nohup "$PYTHON" -m mlflow server \
  --backend-store-uri "postgresql://mlflow:mlflowpw@127.0.0.1:$PGPORT/mlflow" \
  --host 127.0.0.1 --port "$MLFLOW_PORT" --artifacts-destination "$A" --workers 4 \
  >"$L/server.log" 2>&1 &
echo $! > "$PIDS/mlflow.pid"
wait_for 120 curl -sf "$URI/health" || die "mlflow server did not answer; see $L/server.log"
echo "export MLFLOW_TRACKING_URI=$URI" > "$STATE/tracking.env"
lap "mlflow server $URI"
echo "MLFLOW_TRACKING_URI=$URI   (source $STATE/tracking.env)"
