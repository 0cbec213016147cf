#!/usr/bin/env bash
# Creates the database of a postgres:// URL when it does not exist (for `make run-pg`).
# Usage: scripts/ensure-database.sh postgres://user:password@host:port/name
set -euo pipefail
url=${1:?usage: ensure-database.sh postgres://user:password@host:port/name}
name=${url##*/}
name=${name%%\?*}
admin=${url%/*}/postgres
[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "ensure-database: unusual database name: $name" >&2; exit 1; }
if [ "$(psql "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" != 1 ]; then
  psql "$admin" -qc "CREATE DATABASE $name"
  echo "ensure-database: created $name"
fi
