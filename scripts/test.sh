#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test: pytest on tests/ and strict nbval on notebooks/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
