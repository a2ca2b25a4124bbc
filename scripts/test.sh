#!/usr/bin/env bash
# The whole test suite on a Debian machine, as root: installs what is missing (scripts/deps.sh),
# type-checks, builds the binaries, runs the fast tests (fake docker shim, real git) and then the
# end-to-end tests against the real Docker engine. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bun install --frozen-lockfile >/dev/null
echo "== tsc --noEmit"
bunx tsc --noEmit -p .
echo "== build"
bash scripts/build.sh
passed=0; failed=0
run() {
  local name="$1"; shift
  echo "== $name"
  local out rc=0
  out=$(mktemp)
  bun test "$@" 2>&1 | tee "$out" || rc=$?
  passed=$((passed + $(sed -n 's/^ *\([0-9]*\) pass$/\1/p' "$out" | tail -n 1 | grep . || echo 0)))
  failed=$((failed + $(sed -n 's/^ *\([0-9]*\) fail$/\1/p' "$out" | tail -n 1 | grep . || echo 0)))
  rm -f "$out"
  [ "$rc" = 0 ] || failed=$((failed > 0 ? failed : 1))
}
# shellcheck disable=SC2046
run "unit and integration tests" --timeout 60000 --parallel=2 $(ls test/*_test.ts)
run "end-to-end tests (real Docker engine)" --timeout 300000 --parallel=2 --path-ignore-patterns='test/e2e/serial/**' test/e2e/
run "end-to-end: timed tests, alone" --timeout 300000 test/e2e/serial/
# The reliability and security suite (scripts/reliability.sh runs the same two parts on its own).
run "reliability and security suite" --timeout 600000 --path-ignore-patterns='test/reliability/serial/**' test/reliability/
run "reliability: Docker engine restart" --timeout 600000 test/reliability/serial/
echo "tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
