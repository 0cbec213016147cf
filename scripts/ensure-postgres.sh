#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432, for the tests of the Postgres store
# and `imks migrate`. Does nothing where one answers; otherwise installs Debian's postgresql
# where it is missing, starts its cluster, and gives the `postgres` role the password of the
# tests' default URL (postgres://postgres:postgres@127.0.0.1:5432/postgres, or $IMKS_TEST_PG_URL).
set -euo pipefail

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "ensure-postgres: need root to run: $*" >&2; exit 1; fi
}

ready() {
  if command -v pg_isready >/dev/null; then pg_isready -q -h 127.0.0.1 -p 5432; else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; fi
}

ready && exit 0

if ! command -v pg_ctlcluster >/dev/null; then
  command -v apt-get >/dev/null || { echo "ensure-postgres: please install PostgreSQL 15 or later" >&2; exit 1; }
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
fi
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  need_root pg_createcluster "$version" main
fi
need_root pg_ctlcluster "$version" main start || true
for _ in $(seq 100); do ready && break; sleep 0.1; done
ready || { echo "ensure-postgres: PostgreSQL $version did not start" >&2; exit 1; }
need_root su postgres -c "psql -q -c \"ALTER ROLE postgres PASSWORD 'postgres'\""
echo "ensure-postgres: PostgreSQL $version runs on 127.0.0.1:5432"
