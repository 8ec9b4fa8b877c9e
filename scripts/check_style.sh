#!/usr/bin/env bash
# Fails on lint or format drift: ruff (settings in pyproject.toml) over the Python files, and
# clang-format (.clang-format) over csrc/. Installs what it needs (scripts/setup_env.sh); .ci/run
# runs it after the tests. To fix drift: .venv/bin/ruff format . && .venv/bin/ruff check --fix . &&
# .venv/bin/clang-format -i csrc/*.h csrc/*.cpp csrc/*.cu
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
status=0
.venv/bin/ruff check . || status=1
.venv/bin/ruff format --check . || status=1
mapfile -t sources < <(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/**/*.h' 'csrc/**/*.cpp' 'csrc/**/*.cu')
.venv/bin/clang-format --dry-run --Werror "${sources[@]}" || status=1
if [ "$status" != 0 ]; then
  echo "check_style: lint or format drift (see above); fix it with the commands at the top of scripts/check_style.sh" >&2
fi
exit "$status"
