#!/usr/bin/env bash
# Runs every test target and ends with one totals line, "tests: N passed, N failed",
# because cargo's own last line belongs to whichever target ran last; every
# target runs (--no-fail-fast), so one failure does not hide the others.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo
# With RUST_BACKTRACE set, a failure's message sits far above the end of the
# output, where a CI log excerpt cannot reach it: repeat each one here.
if [ "$status" -ne 0 ]; then
    echo "failures (panic messages, first lines):"
    awk '/^thread .* panicked at / { print "  " $0; left = 3; next }
         left > 0 && /^stack backtrace:|^note: / { left = 0; next }
         left > 0 { print "    " $0; left-- }' "$log" | head -n 60
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
