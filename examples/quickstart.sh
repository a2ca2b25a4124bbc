#!/usr/bin/env bash
# From nothing to a container run by pgod, on a fresh Debian machine, as root:
# installs what is missing, builds dist/pgod, makes a git repository of examples/demo, and runs
# pgod on it in the foreground (Ctrl-C stops pgod and leaves the container running).
# PGO_QUICKSTART_DIR (default /var/lib/pgo-quickstart) holds everything it makes.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
q="${PGO_QUICKSTART_DIR:-/var/lib/pgo-quickstart}"
bash scripts/deps.sh
bun install --frozen-lockfile >/dev/null
bash scripts/build.sh >/dev/null
mkdir -p "$q"
if [ ! -d "$q/demo.git" ]; then
  git init --quiet --bare -b main "$q/demo.git"
  rm -rf "$q/work"
  git clone --quiet "$q/demo.git" "$q/work" 2>/dev/null
  cp -r "$top/examples/demo/." "$q/work/"
  git -C "$q/work" add -A
  git -C "$q/work" -c user.name=pgo -c user.email=pgo@localhost commit --quiet -m "Demo service"
  git -C "$q/work" push --quiet origin HEAD:main
fi
cat > "$q/pgo.toml" <<TOML
[[services]]
name = "demo"
user = "root"
repository = "$q/demo.git"
TOML
cat >&2 <<MSG
quickstart: pgod runs the demo service from $q/demo.git (config $q/pgo.toml).
quickstart: see it with:  docker ps --filter label=com.docker.compose.project=demo
quickstart: change it:    cd $q/work, edit www/index.html or compose.yaml, git commit -am x, git push
MSG
exec "$top/dist/pgod" -c "$q/pgo.toml" -d "$q/dir" --datadir "$q/data" -t "${PGO_QUICKSTART_INTERVAL:-10s}" \
  -s "${PGO_QUICKSTART_SSH:-127.0.0.1:2222}" -m "${PGO_QUICKSTART_METRICS:-127.0.0.1:9112}" "$@"
