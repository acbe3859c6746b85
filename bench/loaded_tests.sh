#!/usr/bin/env bash
# The template's test command (README "Run the tests") several times in a row, beside busy
# CPU processes, to show that no test depends on having the machine to itself.
#
#     bash bench/loaded_tests.sh [RUNS] [BUSY]     # defaults: 5 runs, 2 busy processes
#
# Needs the .venv that the README's command makes. Each busy process is a Python loop at
# normal priority; on a 2-core machine two of them leave the suite's two workers about half
# of the CPU. Stops at the first run that fails. One line per run on stdout; each run's
# whole output in bench/results/loaded/run-N.log.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
busy=${2:-2}
logs=bench/results/loaded
mkdir -p "$logs"

pids=()
for _ in $(seq "$busy"); do
  python3 -c "while True: pass" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $busy busy processes, $(date -u '+%Y-%m-%d %H:%M UTC')"
for run in $(seq "$runs"); do
  started=$(date +%s)
  .venv/bin/python -m pytest >"$logs/run-$run.log" 2>&1
  code=$?
  echo "run $run: exit $code after $(($(date +%s) - started)) s: $(tail -1 "$logs/run-$run.log")"
  [ "$code" -eq 0 ] || exit "$code"
done
