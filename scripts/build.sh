#!/usr/bin/env bash
# Builds dist/pgod and dist/pgoctl as single executables with the version baked in.
# --external cpu-features: ssh2's optional native module is not shipped (pure JS fallback).
# --no-compile-autoload-*: the binaries must not read .env or bunfig.toml from their cwd.
# --bytecode: ship JavaScriptCore bytecode, not source to parse at every start; it cuts the CPU
# of starting pgoctl and pgod by about a third (bench/README.md). It needs --format=esm for
# the top-level await of the entry points.
# --compile-jit-policy=100 (pgoctl only): a run-once client spent more CPU compiling its code
# than the compiled code saved; pgoctl restores the normal policy once output gets large.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${PGO_VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo unknown)}"
mkdir -p dist
for prog in pgod pgoctl; do
  [ -f "src/cmd/$prog.ts" ] || continue
  extra=()
  [ "$prog" = pgoctl ] && extra=(--compile-jit-policy=100)
  bun build --compile --bytecode --format=esm --minify-syntax --external cpu-features "${extra[@]}" \
    --no-compile-autoload-dotenv --no-compile-autoload-bunfig \
    --define "PGO_VERSION=\"$version\"" \
    "src/cmd/$prog.ts" --outfile "dist/$prog" >/dev/null
  echo "built dist/$prog ($version)"
done
