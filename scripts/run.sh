#!/usr/bin/env bash
# Sets everything up, then runs the main job: `rtcore launch` (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rtcore launch "$@"
