#!/usr/bin/env bash
# Builds the Debian package dist/pgo_<version>_<arch>.deb (recipe: packaging/build-deb.sh);
# builds dist/pgod and dist/pgoctl first when they are missing or stale. Prints the .deb's path.
set -euo pipefail
exec bash "$(dirname "$0")/../packaging/build-deb.sh" "$@"
