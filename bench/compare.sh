#!/usr/bin/env bash
# bench/compare.sh: two sluice builds side by side, in one run.
#
# What it measures
#   The accept benchmark (accept.sh) and the relay benchmark (relay.sh,
#   sluice only, no perf) for BEFORE_BIN and AFTER_BIN, alternating build
#   by build ROUNDS times (default 2), so that both meet the same moments of
#   a noisy machine. Used to show that a change that should not change
#   speed (a restructuring) did not. The tables of each run are printed with
#   the build's label and collected in bench/out/compare-<date>.txt.
#
# How to run (from the repository root)
#   BEFORE_BIN=/path/old/sluice AFTER_BIN=target/release/sluice bench/compare.sh
#   ROUNDS=3 SIZES="4096" SESSIONS="10 50" bench/compare.sh   (rows as in accept.sh)
#   QUICK=1 bench/compare.sh                                  (accept/relay --quick)
#   Needs what accept.sh and relay.sh need (Postfix's smtp-source/smtp-sink).
set -u

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
OUT_DIR=$BENCH_DIR/out
ROUNDS=${ROUNDS:-2}
: "${BEFORE_BIN:?BEFORE_BIN=/path/to/the old sluice}"
AFTER_BIN=${AFTER_BIN:-$BENCH_DIR/../target/release/sluice}
QUICK_ARG=()
[ "${QUICK:-0}" = 1 ] && QUICK_ARG=(--quick)
for b in "$BEFORE_BIN" "$AFTER_BIN"; do
    [ -x "$b" ] || { echo "missing $b" >&2; exit 2; }
done
mkdir -p "$OUT_DIR"
RESULT=$OUT_DIR/compare-$(date +%Y%m%d-%H%M%S).txt

# One run of a benchmark for one build: its table, each line labelled.
run() {
    local label=$1 bin=$2 script=$3
    shift 3
    SLUICE_BIN=$bin "$BENCH_DIR/$script" "${QUICK_ARG[@]}" "$@" 2>&1 \
        | grep -E '^( *[0-9]+K|size|relay |sluice |#)' | sed "s/^/$label $script: /"
}

{
    echo "# before: $BEFORE_BIN ($(stat -c %s "$BEFORE_BIN") B)"
    echo "# after:  $AFTER_BIN ($(stat -c %s "$AFTER_BIN") B)"
    for round in $(seq 1 "$ROUNDS"); do
        echo "# round $round"
        run before "$BEFORE_BIN" accept.sh
        run after "$AFTER_BIN" accept.sh
        run before "$BEFORE_BIN" relay.sh --only sluice --no-perf
        run after "$AFTER_BIN" relay.sh --only sluice --no-perf
    done
} | tee "$RESULT"
echo "# written to $RESULT"
