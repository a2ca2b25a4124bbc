#!/usr/bin/env bash
# The baseline of bench/run: one cycle of what the original pgod (or a cron job) does for every
# service each time it polls, whether or not anything changed:
#   git stash; git pull --rebase; docker compose up -d
# Usage: bench/baseline.sh CHECKOUT... (each a git checkout holding a compose file; the compose
# project is named after the directory, as docker compose does by default).
# Exits 1 when any step of any service failed, after trying every service.
# Run as the services' user (bench/run --remotes=ssh runs it with `runuser -u USER`): git pulls
# over ssh with that user's key and known_hosts, as pgod's services do.
set -u
rc=0
for dir in "$@"; do
  if ! cd "$dir"; then rc=1; continue; fi
  # pgod keeps a checkout's git directory outside it (<dir>/.gitdirs/<name>).
  if [ ! -e .git ]; then export GIT_DIR="${dir%/*}/.gitdirs/${dir##*/}" GIT_WORK_TREE="$dir"; else unset GIT_DIR GIT_WORK_TREE; fi
  git stash --quiet || rc=1
  git pull --quiet --rebase || rc=1
  docker compose up --detach --quiet-pull 2>/dev/null || rc=1
done
exit "$rc"
