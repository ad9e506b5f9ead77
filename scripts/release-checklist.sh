#!/usr/bin/env bash
# The release checklist (issues 8 and 20), a thin wrapper over `profiler checklist`:
#
#   scripts/release-checklist.sh RELEASE [TARGET] [CHECKLIST OPTIONS...]
#
# Builds the release profiler and the testbed, then runs `profiler checklist RELEASE` (through
# sudo when not root: the captures load eBPF programs). TARGET is testbed-pool (the default) or
# testbed-ledger; any server of your own is checked with options instead, e.g.
#
#   scripts/release-checklist.sh v2.3.1 --start "/usr/local/bin/pool -c pool.conf" \
#       --url stratum://127.0.0.1:3333
#
# Each step (smoke, standard, stress load; every profiler family captured under the standard
# profile; a short soak with --alloc) runs against a server started for it, everything is
# archived under RESULTS_DIR/RELEASE/ with timestamped names, the standard capture is compared
# with the previous archived release of the same server, and the checklist prints PASS or FAIL
# per line. Exits 0 when no line failed, 2 on a regression against the previous release, 1
# when another line failed. `target/release/profiler checklist --help` lists every option.
#
# Environment (each the same as an option of `profiler checklist`):
#   TARGET_ARGS           extra testbed arguments, e.g. "--slow-every 50 --slow-spin"  (--target-args)
#   RESULTS_DIR           where archives live (default: results/)                      (--results-dir)
#   PREVIOUS              release to compare with: a name under RESULTS_DIR, a path, or none
#                         (default: the newest other archive of the same server)      (--previous)
#   CHECKLIST_SMOKE_S     seconds of each step (defaults: the profiles' 30, 60 and 120 s,
#   CHECKLIST_STANDARD_S    and a 600 s soak)                   (--smoke-s, --standard-s, ...)
#   CHECKLIST_STRESS_S
#   CHECKLIST_SOAK_S
#   P99_SLO_MS            the standard profile's p99 objective (default: 10)           (--p99-slo-ms)
#   GATES                 a gates.json with the comparison's thresholds                (--gates)
#
# Ctrl-C or SIGTERM stops the server, the load and the capture of the step running.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi

args=(checklist "$1")
shift
if [[ $# -gt 0 && $1 != -* ]]; then
    args+=(--testbed "$1")
    shift
fi
# Paths given relative to where we were called from stay so after the cd below.
for var in RESULTS_DIR GATES PREVIOUS; do
    if [[ -n ${!var:-} && ( $var != PREVIOUS || -e ${!var} ) ]]; then
        export "$var=$(realpath -m -- "${!var}")"
    fi
done
[[ -n ${TARGET_ARGS:-} ]] && args+=(--target-args "$TARGET_ARGS")
[[ -n ${PREVIOUS:-} ]] && args+=(--previous "$PREVIOUS")
[[ -n ${CHECKLIST_SMOKE_S:-} ]] && args+=(--smoke-s "$CHECKLIST_SMOKE_S")
[[ -n ${CHECKLIST_STANDARD_S:-} ]] && args+=(--standard-s "$CHECKLIST_STANDARD_S")
[[ -n ${CHECKLIST_STRESS_S:-} ]] && args+=(--stress-s "$CHECKLIST_STRESS_S")
[[ -n ${CHECKLIST_SOAK_S:-} ]] && args+=(--soak-s "$CHECKLIST_SOAK_S")
[[ -n ${P99_SLO_MS:-} ]] && args+=(--p99-slo-ms "$P99_SLO_MS")
[[ -n ${GATES:-} ]] && args+=(--gates "$GATES")

cd "$(dirname "$0")/.."
if [[ -n ${RESULTS_DIR:-} || ! " $* " =~ " --results-dir" ]]; then
    args+=(--results-dir "${RESULTS_DIR:-$PWD/results}")
fi
"${CARGO:-cargo}" build --quiet --release --package profiler --package testbed
profiler="$(realpath "${CARGO_TARGET_DIR:-target}")/release/profiler"
# Become the checklist (exec), so a signal to this script's pid reaches it, and it stops what
# it started.
if [[ $(id -u) -ne 0 ]]; then
    exec sudo -- "$profiler" "${args[@]}" "$@"
fi
exec "$profiler" "${args[@]}" "$@"
