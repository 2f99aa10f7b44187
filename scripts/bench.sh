#!/usr/bin/env bash
# `make bench`: runs the benchmarks and appends their figures to BENCHMARKS.md
# with the machine, the date and the commit. Compare figures within one run:
# the machine may be shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT

machine_header() {
  local cpu memory commit
  cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //' || echo unknown)
  memory=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || echo unknown)
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "$(git status --porcelain 2>/dev/null)" ] && commit="$commit (with uncommitted changes)"
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit${1:+ ($1)}"
  echo
  echo "Machine: $(nproc) cores ($cpu), $memory, $(uname -sr)."
  echo
}

[ -f BENCHMARKS.md ] || printf '# Benchmarks\n\nAppended by `make bench`; newest last. Figures of one run are compared with each other, not across runs.\n' > BENCHMARKS.md

# `make bench ONLY=viewer,pressure`: only those cases of assay-bench, appended the same way.
if [ -n "${ONLY:-}" ]; then
  cargo build --release --workspace --bins
  for case in ${ONLY//,/ }; do
    echo "==> $case"
    "${CARGO_TARGET_DIR:-target}/release/assay-bench" --only "$case" | tee -a "$out"
  done
  { machine_header "only: $ONLY"; cat "$out"; } >> BENCHMARKS.md
  echo "==> appended to BENCHMARKS.md"
  exit 0
fi

echo "==> grading and rendering (criterion)"
cargo bench -p assay-core --bench graders -- --output-format bencher | tee -a "$out"
echo "==> result writes (PostgreSQL)"
cargo bench -p assay-testkit --bench result_writes | tee -a "$out"
echo "==> scale-out: the real binaries against the mock server (release build)"
cargo build --release --workspace --bins
scale=$(mktemp)
trap 'rm -f "$out" "$scale"' EXIT
"${CARGO_TARGET_DIR:-target}/release/assay-bench" > "$scale"

ns() { awk -v name="$1" '$2 == name { gsub(",", "", $5); print $5 }' "$out"; }
write_ns=$(sed -nE 's/^result_write: ([0-9]+) ns\/row.*/\1/p' "$out")
[ -n "$write_ns" ] || { echo "error: the result-write benchmark printed no figure" >&2; exit 1; }
us() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

{
  machine_header
  echo "### Grading and templates (per item, release build)"
  echo
  echo "| what | per item | ÷ one result write |"
  echo "|---|---|---|"
  for family in strings structure similarity shape; do
    value=$(ns "grade_item/$family")
    echo "| grade with the $family family ($(case $family in strings) echo 'equals, icontains, contains-all, regex';; structure) echo 'contains-json, json-schema, json-path';; similarity) echo 'similarity, rouge-l, bleu';; shape) echo 'word-count, latency, finish-reason';; esac)) | $(us "$value") µs | $(ratio "$value" "$write_ns") |"
  done
  value=$(ns render_item)
  echo "| render a two-message template with a loop and a filter | $(us "$value") µs | $(ratio "$value" "$write_ns") |"
  echo "| **write one result row** (500-row batches, counters moved in the same transaction) | **$(us "$write_ns") µs** | 1 |"
  echo
  echo "Grading runs inside each LLM call's task, in parallel across cores; result writes go through one writer per chunk. A ratio below 1 means grading an item costs less than writing it, so deterministic graders are not what bounds an evaluation's throughput."
  echo
  cat "$scale"
} >> BENCHMARKS.md
echo "==> appended to BENCHMARKS.md"
