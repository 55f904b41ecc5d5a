#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a bounded time each (the test suite calls it).
#
#   scripts/fuzz.sh                 every target, MULTIMESH_FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh 600 catalog_merge
#                                   one target for ten minutes
#
# Targets (their properties are written at the top of each file in fuzz/fuzz_targets/):
#   h1codec        the HTTP/1.1 response codec: no panic, same outcome however the bytes are cut
#   smi_yaml       smi-adapters' YAML input: no panic, bounded, rendered YAML reads back the same
#   catalog_merge  sync messages from a hostile peer never change another origin's state
#
# Needs a nightly toolchain (pinned below, installed with rustup if missing) and cargo-fuzz
# (installed if missing). Each run starts from the seeds in fuzz/seeds/TARGET and the corpus
# kept in the cache, with AddressSanitizer. A failing input is saved under
# fuzz/artifacts/TARGET/; the script prints the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLCHAIN=nightly-2026-05-20
CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH=${1:-${MULTIMESH_FUZZ_SECONDS:-60}}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(h1codec smi_yaml catalog_merge)
CACHE=${MULTIMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/multimesh}/fuzz-corpus

log() { printf '==> %s\n' "$*" >&2; }

case "$SECONDS_EACH" in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$SECONDS_EACH'" >&2; exit 2 ;;
esac

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  log "installing the $TOOLCHAIN toolchain (fuzzing needs nightly for its sanitizer flags)"
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cd fuzz
log "building the fuzz targets ($TOOLCHAIN, release with debug assertions, AddressSanitizer)"
if ! cargo "+$TOOLCHAIN" fuzz build -O > /tmp/multimesh-fuzz-build.log 2>&1; then
  cat /tmp/multimesh-fuzz-build.log >&2
  echo "building the fuzz targets FAILED" >&2
  exit 1
fi
for t in "${TARGETS[@]}"; do
  mkdir -p "$CACHE/$t"
  log "fuzzing $t for ${SECONDS_EACH}s (corpus $CACHE/$t, seeds fuzz/seeds/$t)"
  if ! cargo "+$TOOLCHAIN" fuzz run -O "$t" "$CACHE/$t" "seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 > "/tmp/multimesh-fuzz-$t.log" 2>&1; then
    tail -60 "/tmp/multimesh-fuzz-$t.log" >&2
    echo "fuzz target $t FAILED; the input is in fuzz/artifacts/$t/; replay it with:" >&2
    echo "  (cd fuzz && cargo +$TOOLCHAIN fuzz run -O $t artifacts/$t/<file>)" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done' "/tmp/multimesh-fuzz-$t.log" | tail -1 | sed "s/^/    $t: /" >&2
done
