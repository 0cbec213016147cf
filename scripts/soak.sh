#!/usr/bin/env bash
# A soak of one imks node: about 19,000 connections for ten minutes (`make soak`), or 5,000 for
# a minute (`make soak-ci`), of Socket.IO over WebSocket, Socket.IO over long-polling and the
# native protocol, with churn and traffic; see loadgen/README.md (Soak) and docs/benchmarks.md.
#
#   scripts/soak.sh IMKS_BINARY LOADGEN_BINARY
#
# Knobs, as environment variables (not IMKS_*, which the server reads as its configuration):
#   SOAK_CONNECTIONS  clients held (19000 by default less the second connection each
#                     long-polling client takes, so the server holds about 19,000)  18200
#   SOAK_MIX          weights of Socket.IO/WebSocket, Socket.IO/polling, native     60,4,36
#   SOAK_DURATION     seconds of measurement                                        600
#   SOAK_RATE         messages per second over all clients                          400
#   SOAK_CHURN        clients replaced per second                                   20
#   SOAK_ROOMS        rooms the Socket.IO clients are spread over                   100
#   SOAK_PROCESSES    load generator processes (each may open 20,000 files)         3
#   SOAK_PORT         the node's port on 127.0.0.1                                  3990
#   SOAK_OUT          where the JSON report and the plot go                         bench/soak
#   SOAK_PLOT         the SVG plot                                                  $SOAK_OUT/soak.svg
#
# Everything runs on 127.0.0.1 and ends by itself: the load generator is bounded by its own
# timeouts and by `timeout` here, and the node is stopped on the way out. The exit status is
# the load generator's: 0 for a clean run, 3 when a message was lost, a connection dropped or
# a connection was left open on the server after every client left.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 IMKS_BINARY LOADGEN_BINARY" >&2
    exit 2
fi
IMKS_BIN=$1
LOADGEN_BIN=$2
for b in "$IMKS_BIN" "$LOADGEN_BIN"; do
    [[ -x $b ]] || { echo "soak: $b is not an executable (build it first)" >&2; exit 2; }
done

CONNECTIONS=${SOAK_CONNECTIONS:-18200}
MIX=${SOAK_MIX:-60,4,36}
DURATION=${SOAK_DURATION:-600}
RATE=${SOAK_RATE:-400}
CHURN=${SOAK_CHURN:-20}
ROOMS=${SOAK_ROOMS:-100}
PROCESSES=${SOAK_PROCESSES:-3}
PORT=${SOAK_PORT:-3990}
OUT=${SOAK_OUT:-bench/soak}
PLOT=${SOAK_PLOT:-$OUT/soak.svg}
mkdir -p "$OUT" "$(dirname "$PLOT")"

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "soak: something already listens on 127.0.0.1:$PORT (set SOAK_PORT)" >&2
    exit 2
fi

# The node: the conformance application (rooms, `echo-ack`, native `/ws`) without a message
# rate limit, with heartbeats a real deployment would use, and a memory store bounded low
# enough that it is full within the first minute of `make soak` (the soak checks that RSS stays
# flat after warm-up; a store that kept every chat message would grow by design).
LOG=$OUT/imks.log
IMKS_LOG__LEVEL=warn \
IMKS_LIMITS__MESSAGE_RATE=0 \
IMKS_STORE__MAX_MESSAGES=2000 \
IMKS_STORE__MAX_DEDUP_ENTRIES=2000 \
IMKS_STORE__MAX_CONVERSATIONS=2000 \
    "$IMKS_BIN" conformance --port "$PORT" --ping-interval 25000 --ping-timeout 20000 >"$LOG" 2>&1 &
SERVER=$!
stop_server() {
    if kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$SERVER" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER" 2>/dev/null || true
    fi
    wait "$SERVER" 2>/dev/null || true
}
trap stop_server EXIT

for _ in $(seq 1 100); do
    if curl -fsS --max-time 2 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
        break
    fi
    kill -0 "$SERVER" 2>/dev/null || { echo "soak: imks exited; its log:" >&2; cat "$LOG" >&2; exit 1; }
    sleep 0.1
done

echo "soak: $CONNECTIONS clients (mix $MIX) for $DURATION s at $RATE messages/s, $CHURN replaced per second;" \
    "imks pid $SERVER on 127.0.0.1:$PORT"
status=0
timeout --kill-after=10 $((DURATION + 420)) "$LOADGEN_BIN" soak \
    --url "ws://127.0.0.1:$PORT" --health-url "http://127.0.0.1:$PORT/health" --server-pid "$SERVER" \
    -c "$CONNECTIONS" --mix "$MIX" --rooms "$ROOMS" --rate "$RATE" --churn "$CHURN" \
    -d "$DURATION" --warmup 0 --drain 10 --processes "$PROCESSES" --setup-timeout 300 \
    --connect-concurrency 128 --json "$OUT/soak.json" --plot "$PLOT" -q || status=$?
if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "soak: imks exited during the run; its log:" >&2
    tail -n 50 "$LOG" >&2
    status=1
fi
echo "soak: report $OUT/soak.json, plot $PLOT, server log $LOG (exit status $status)"
exit "$status"
