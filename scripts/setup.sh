#!/usr/bin/env bash
# Installs everything rtcore needs on a fresh Debian/Ubuntu machine: system packages, a Python
# virtual environment in .venv with rtcore and its dependencies, and the assembled Whisper model.
# Idempotent: a second run only checks. Environment: PYTHON (default python3), RTCORE_TORCH (the
# torch requirement, default the CPU wheel torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus: promtool and a real Prometheus server for the metrics tests; chromium and its
# driver: the live view is tested in a real headless browser.
system_packages=(redis-server espeak-ng sox prometheus chromium chromium-driver)
missing=()
for pkg in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first, pinned to the CPU wheel: silero-vad depends on torch, and an unpinned torch would
# pull a multi-GB CUDA build.
"${pip[@]}" "${RTCORE_TORCH:-torch==2.13.0}"
"${pip[@]}" -e ".[test]"
.venv/bin/rtcore models >/dev/null
echo "setup: ready ($(.venv/bin/python -c 'import rtcore; print("rtcore", rtcore.__version__)'))"
