#!/usr/bin/env bash
# Starts three imks nodes on ports 3000, 3001 and 3002 (BASE_PORT and up), joined over the
# local NATS (NATS_URL), or over the local Redis with BACKEND=redis (REDIS_URL), and stops them
# all on Ctrl-C. Usage: [BACKEND=redis] scripts/cluster.sh [imks binary]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/imks}
base=${BASE_PORT:-3000}
backend=${BACKEND:-nats}
case "$backend" in
  nats) url=${NATS_URL:-nats://127.0.0.1:4222} ;;
  redis) url=${REDIS_URL:-redis://127.0.0.1:6379} ;;
  *) echo "cluster.sh: BACKEND is nats or redis" >&2; exit 1 ;;
esac
config=()
[ -f imks.toml ] && config=(--config imks.toml)

scripts/ensure-"$backend".sh
pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM
for i in 0 1 2; do
  port=$((base + i))
  IMKS_CLUSTER__BACKEND="$backend" IMKS_CLUSTER__URL="$url" IMKS_CLUSTER__NODE_ID="node-$((i + 1))" \
  IMKS_SERVER__LISTEN="[\"0.0.0.0:$port\"]" "$bin" serve "${config[@]}" 2>&1 | sed -u "s/^/[node-$((i + 1)) :$port] /" &
  pids+=($!)
done
echo "cluster: node-1 on :$base, node-2 on :$((base + 1)), node-3 on :$((base + 2)) over $url; Ctrl-C stops all three"
wait
