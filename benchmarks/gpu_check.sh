#!/usr/bin/env bash
# The GPU check, from the repository root: benchmarks/gpu_check.py with the arguments given
# (e.g. --smoke, --out FOLDER, --train-minutes 4). The data is looked for in $UNET_DATA_DIR,
# else ../shared/data beside the repository. The whole check is stopped after
# $GPU_CHECK_TIMEOUT seconds (default 600, the 10-minute target; --train-minutes is 4 of it).
set -euo pipefail
cd "$(dirname "$0")/.."
export UNET_DATA_DIR="${UNET_DATA_DIR:-$(cd .. && pwd)/shared/data}"
exec timeout "${GPU_CHECK_TIMEOUT:-600}" python3 benchmarks/gpu_check.py "$@"
