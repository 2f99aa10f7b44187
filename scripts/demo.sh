#!/usr/bin/env bash
# `make demo`: migrates a local database, starts the API and two workers in
# the background, runs `assay demo` (a 200-item evaluation over two mock
# models, with a progress bar and a summary table), prints the web viewer's
# URL of that evaluation, and stops everything it started, also on Ctrl-C or
# failure. `make demo-ui` (DEMO_UI=1) keeps the API and workers running so
# the viewer can be opened.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${CARGO_TARGET_DIR:-target}/debug"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/assay}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export ASSAY_QUEUE_PREFIX="${ASSAY_QUEUE_PREFIX:-assay-demo}"
port="${DEMO_PORT:-18080}"
export ASSAY_BIND="127.0.0.1:$port"
export RUST_LOG="${RUST_LOG:-warn}"
logs=.demo
mkdir -p "$logs"

pids=()
viewer=""
cleanup() {
  status=$?
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo "==> stopping the API and workers"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ $status -ne 0 ]; then
    echo "demo failed (exit $status); logs are in $logs/" >&2
  elif [ -n "$viewer" ]; then
    # The last line: where to see this evaluation (`make demo-ui` keeps the API up for it).
    echo "Viewer: $viewer"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

database="${DATABASE_URL##*/}"
admin="${DATABASE_URL%/*}/postgres"
if ! psql "$admin" -Atc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
  echo "==> creating database $database"
  psql "$admin" -qc "CREATE DATABASE \"$database\""
fi
echo "==> migrating $database"
"$bin/assay-api" migrate

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "error: port $port is taken; set DEMO_PORT to a free port" >&2
  exit 1
fi
echo "==> starting the API on $ASSAY_BIND and two workers"
"$bin/assay-api" serve >"$logs/api.log" 2>&1 &
pids+=($!)
for n in 1 2; do
  "$bin/assay-worker" --bind "127.0.0.1:0" --concurrency 16 >"$logs/worker-$n.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do
  curl -fsS "http://$ASSAY_BIND/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$ASSAY_BIND/readyz" >/dev/null || { echo "error: the API did not become ready; see $logs/api.log" >&2; exit 1; }

key=$("$bin/assay-api" keys create --tenant demo 2>/dev/null)
echo "==> created an API key for tenant demo"
"$bin/assay" --api-url "http://$ASSAY_BIND" --key "$key" demo | tee "$logs/demo.out"
evaluation=$(grep -oE 'Evaluation [0-9a-f-]{36}' "$logs/demo.out" | tail -n1 | cut -d' ' -f2 || true)
viewer="http://$ASSAY_BIND/ui/evaluations/$evaluation"

# `make demo-ui` (DEMO_UI=1): the viewer needs the API up; sign in with the key.
if [ "${DEMO_UI:-}" = 1 ]; then
  echo "==> the API and workers keep running (Ctrl-C stops them); sign in with the API key"
  echo "    API key: $key"
  echo "Viewer: $viewer"
  wait
fi

# `DEMO_KEEP=1 make demo` leaves the API and workers running (until Ctrl-C)
# for the README's quick start (`assay init && assay eval`).
if [ "${DEMO_KEEP:-}" = 1 ]; then
  echo "==> the API and workers keep running; in another shell:"
  echo "    export PATH=\"$(cd "$bin" && pwd):\$PATH\" ASSAY_API_URL=http://$ASSAY_BIND ASSAY_API_KEY=$key"
  echo "    assay init && assay eval        (Ctrl-C here stops everything)"
  wait
fi
