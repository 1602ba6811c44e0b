#!/usr/bin/env bash
# Sets everything up, then runs the test suite (arguments are passed to pytest). The tests start
# the servers they need themselves (redis-server through rtcore's own private-Redis code).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
