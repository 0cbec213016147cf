#!/usr/bin/env bash
# Starts three imks nodes on ports 3000, 3001 and 3002 (BASE_PORT and up), joined over the
# local NATS (NATS_URL), and stops them all on Ctrl-C. Usage: scripts/cluster.sh [imks binary]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/imks}
base=${BASE_PORT:-3000}
nats=${NATS_URL:-nats://127.0.0.1:4222}
config=()
[ -f imks.toml ] && config=(--config imks.toml)

scripts/ensure-nats.sh
pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM
for i in 0 1 2; do
  port=$((base + i))
  IMKS_CLUSTER__BACKEND=nats IMKS_CLUSTER__URL="$nats" IMKS_CLUSTER__NODE_ID="node-$((i + 1))" \
  IMKS_SERVER__LISTEN="[\"0.0.0.0:$port\"]" "$bin" serve "${config[@]}" 2>&1 | sed -u "s/^/[node-$((i + 1)) :$port] /" &
  pids+=($!)
done
echo "cluster: node-1 on :$base, node-2 on :$((base + 1)), node-3 on :$((base + 2)) over $nats; Ctrl-C stops all three"
wait
