#!/usr/bin/env bash
# Sets everything up, checks lint (ruff) and types (mypy), then runs the test suite (arguments are
# passed to pytest). A lint or type error fails it before any test runs. The tests start the
# servers they need themselves (redis-server through rtcore's own private-Redis code).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: ruff check"
.venv/bin/ruff check rtcore procs bench tests
echo "test: mypy (strict on rtcore.runtime and rtcore.media; pyproject.toml)"
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
