#!/usr/bin/env bash
# The release checklist (issue 8):
#
#   scripts/release-checklist.sh RELEASE [TARGET]
#
# Against TARGET (testbed-pool, the default, or testbed-ledger), each step on a fresh server:
# smoke, standard and stress load; every profiler family captured under the standard profile;
# a short soak with --alloc. Archives the load reports, flamegraphs and summaries under
# RESULTS_DIR/RELEASE/ with timestamped names, compares the standard capture with the previous
# archived release (diff.svg, compare.json), and prints the checklist, PASS or FAIL per line.
# Exits 0 when no line failed, 1 otherwise.
#
# Environment (each also a --flag of `cargo xtask release-checklist`, see its --help):
#   TARGET_ARGS           extra target arguments, e.g. "--slow-every 50 --slow-spin"
#   RESULTS_DIR           where archives live (default: results/)
#   PREVIOUS              release to compare with: a name under RESULTS_DIR, a path, or none
#                         (default: the newest other archive of the same target)
#   CHECKLIST_SMOKE_S     seconds of each step (defaults: the profiles' 30, 60 and 120 s,
#   CHECKLIST_STANDARD_S    and a 600 s soak)
#   CHECKLIST_STRESS_S
#   CHECKLIST_SOAK_S
#   P99_SLO_MS            the standard profile's p99 objective (default: 10)
#   GATES                 a gates.json with the comparison's thresholds
#
# Needs root (or sudo) for `profiler attach`. Everything it starts is stopped when it exits,
# on Ctrl-C and SIGTERM too.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || $1 == -* ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi

# Paths given relative to where we were called from stay so after the cd below.
for var in RESULTS_DIR GATES PREVIOUS; do
    if [[ -n ${!var:-} && ( $var != PREVIOUS || -e ${!var} ) ]]; then
        export "$var=$(realpath -m -- "${!var}")"
    fi
done
cd "$(dirname "$0")/.."
# Build the task, then become it (not `cargo xtask`, which keeps cargo in between): a signal to
# this script's pid reaches the task, which stops what it started.
"${CARGO:-cargo}" build --quiet --package xtask
exec "${CARGO_TARGET_DIR:-target}/debug/xtask" release-checklist "$@"
