#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and reports what it found. Findings are left
# in fuzz/artifacts/TARGET/; each one becomes a regression test next to the code it broke.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(manifest bundle_manifest bundle_extract output_capture junit wire)
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 2
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  # cargo fuzz passes -Z flags; stable accepts them only like this.
  export RUSTC_BOOTSTRAP=1
fi
status=0
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  mkdir -p "corpus/$t"
  # Inputs a parser only accepts when well-formed start from a valid one (seeds/TARGET/).
  if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "corpus/$t"/; fi
  if cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>"$t.log"; then
    grep -E "^(#[0-9]+ *DONE|Done [0-9]+ runs)" "$t.log" | tail -1 || true
  else
    echo "   FINDING: see fuzz/$t.log and fuzz/artifacts/$t/" >&2
    status=1
  fi
done
exit $status
