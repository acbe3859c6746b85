#!/usr/bin/env bash
# The GPU check: bench/gpu_check.sh OUTDIR [--dry-run]  (see bench/gpu_check.py and README.md).
# On a lent GPU machine, carry bench/wheels (made here by bench/gpu_wheels.sh) along.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
