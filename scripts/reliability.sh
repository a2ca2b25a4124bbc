#!/usr/bin/env bash
# The reliability and security suite of issue 9 (faults, hostile input, hostile clients, isolation,
# load) against the real Docker engine. Needs what scripts/deps.sh installs and the binaries that
# scripts/build.sh makes. Files run one after another; tests inside a file may run concurrently.
# Tests that stop a Docker engine live in test/reliability/serial/ and run alone, after the rest.
# Arguments (say -t PATTERN) go to both runs; bun test fails a run that a pattern matches nothing in.
set -euo pipefail
cd "$(dirname "$0")/.."
rc=0
bun test --timeout 600000 --path-ignore-patterns='test/reliability/serial/**' test/reliability/ "$@" || rc=$?
bun test --timeout 600000 test/reliability/serial/ "$@" || rc=$?
exit "$rc"
