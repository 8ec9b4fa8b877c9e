#!/usr/bin/env bash
# Installs everything (scripts/setup_env.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
