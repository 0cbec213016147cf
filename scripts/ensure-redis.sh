#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379. Does nothing where one answers;
# otherwise installs Debian's redis-server where it is missing and starts it in the background.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "ensure-redis: need root to run: $*" >&2; exit 1; fi
}

ready() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

ready && exit 0

if ! command -v redis-server >/dev/null; then
  command -v apt-get >/dev/null || { echo "ensure-redis: please install redis-server 7 or later" >&2; exit 1; }
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --logfile /tmp/imks-redis.log
for _ in $(seq 100); do ready && break; sleep 0.1; done
ready || { echo "ensure-redis: redis-server did not start; see /tmp/imks-redis.log" >&2; exit 1; }
echo "ensure-redis: Redis runs on 127.0.0.1:6379"
