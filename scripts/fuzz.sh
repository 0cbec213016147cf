#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/fuzz_targets/) under libFuzzer for SECONDS each, from the
# committed corpus (fuzz/corpus/<target>/), on the stable toolchain: the targets are built with
# the same SanitizerCoverage flags cargo-fuzz passes (without AddressSanitizer, which needs a
# nightly compiler; the code under test is safe Rust). Prints executions and coverage per
# target; a crash or a failed assertion leaves its input in fuzz/artifacts/<target>/ and fails
# the run once every target ran.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 60 s, every target
#
# New inputs a run finds go to a temporary directory; FUZZ_MERGE=1 merges them into the
# committed corpus (libFuzzer -merge=1, which keeps only inputs that add coverage).
# FUZZ_TARGET_DIR (default $CARGO_TARGET_DIR/fuzz, else target/fuzz) holds the build.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^imks-fuzz$')
fi
host=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}

# `--target` keeps the flags off build scripts and proc macros, as cargo-fuzz does.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" --target-dir "$target_dir" \
  $(printf -- '--bin %s ' "${targets[@]}")

failed=()
printf '%-18s %12s %10s %8s %8s\n' target executions exec/s cov features
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  work=$(mktemp -d)
  log=$(mktemp)
  status=0
  "$target_dir/$host/release/$t" "$work" "$corpus" -max_total_time="$seconds" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-18s %12s %10s %8s %8s\n' "$t" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}"
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz: $t failed (exit $status); input in $artifacts/, log follows" >&2
    tail -40 "$log" >&2
  elif [ "${FUZZ_MERGE:-0}" = 1 ]; then
    "$target_dir/$host/release/$t" -merge=1 "$corpus" "$work" >/dev/null 2>&1
  fi
  rm -rf "$work" "$log"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}; make each input a regression test" >&2
  exit 1
fi
