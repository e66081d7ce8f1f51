#!/usr/bin/env bash
# The whole test suite: set-up, build, vitest, then a summary that fails on any skipped test
# (a test skipped because a required service is missing is a failure, not a pass).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1
npx tsc -b || exit 1
node scripts/bundle.mjs > /dev/null || exit 1   # the commands as shipped, which the tests run
npx tsc -p test || exit 1   # the tests themselves are type-checked too (no output)
mkdir -p .tmp
rm -f .tmp/vitest-report.json
npx vitest run --reporter=default --reporter=json --outputFile.json=.tmp/vitest-report.json "$@"
status=$?
node scripts/test-summary.mjs .tmp/vitest-report.json || status=1
exit $status
