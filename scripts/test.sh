#!/usr/bin/env bash
# The test command: lint, then the whole suite (unit, store/queue against the real Redis and
# PostgreSQL servers, browser end-to-end). pytest's "no tests collected" (exit 5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
bash scripts/services.sh
ruff check . || exit 1
python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then echo "test.sh: pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
