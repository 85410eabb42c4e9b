# Shared by the cluster scripts: where state lives, timing, waiting, and "stop what we started".
# Everything a script starts writes its pid under $STATE/pids/; the *_down scripts stop only
# those pids, so a machine's own daemons (a real munged, a real PostgreSQL) are never touched.
STATE=${MEMREPRO_CLUSTER_STATE:-${TMPDIR:-/tmp}/memrepro-cluster}
PIDS=$STATE/pids
mkdir -p "$PIDS"
_T0=$(date +%s.%N)
lap() { printf '[%s] %-30s %6.1fs\n' "$(basename "$0" .sh)" "$1" "$(echo "$(date +%s.%N) - $_T0" | bc)"; }
die() { echo "$(basename "$0"): $*" >&2; exit 1; }
wait_for() { # wait_for <seconds> <cmd...>: poll every 0.25 s
  local n=$(( $1 * 4 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "timeout waiting for: $*" >&2; return 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pidfile() { # stop_pidfile <name> <pidfile>: TERM, wait up to 30 s, then KILL
  local f=$2; alive "$f" || { rm -f "$f"; return 0; }
  local p; p=$(cat "$f"); kill -TERM "$p"
  for _ in $(seq 1 120); do kill -0 "$p" 2>/dev/null || { echo "stopped $1 ($p)"; rm -f "$f"; return 0; }; sleep 0.25; done
  echo "$1 ($p) did not stop in 30 s: SIGKILL"; kill -KILL "$p"; rm -f "$f"; }
apt_install() { # apt_install <pkg...>: only what is missing; refresh the index once if needed
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "needs root to install ${missing[*]} (or install them yourself)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"; }
