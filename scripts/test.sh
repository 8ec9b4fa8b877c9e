#!/usr/bin/env bash
# Installs what it needs (scripts/setup_env.sh; no rebuild when the build is up to date) and runs
# the whole test suite; this is what CI runs. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
