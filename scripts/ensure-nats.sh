#!/usr/bin/env bash
# Makes sure a NATS server with JetStream answers on 127.0.0.1:4222, for the cluster's tests and
# `make cluster`. Does nothing where one answers; otherwise installs Debian's nats-server where
# it is missing and starts it in the background (log: /tmp/imks-nats.log, data:
# /tmp/imks-nats).
set -euo pipefail

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "ensure-nats: need root to run: $*" >&2; exit 1; fi
}

ready() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

ready && exit 0

if ! command -v nats-server >/dev/null; then
  command -v apt-get >/dev/null || { echo "ensure-nats: please install nats-server 2.9 or later" >&2; exit 1; }
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi
mkdir -p /tmp/imks-nats
setsid nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/imks-nats -l /tmp/imks-nats.log </dev/null >/dev/null 2>&1 &
for _ in $(seq 100); do ready && break; sleep 0.1; done
ready || { echo "ensure-nats: nats-server did not start; see /tmp/imks-nats.log" >&2; exit 1; }
echo "ensure-nats: NATS runs on 127.0.0.1:4222"
