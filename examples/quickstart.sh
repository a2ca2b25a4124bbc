#!/usr/bin/env bash
# From nothing to a container run by pgod, on a fresh Debian machine, as root:
# installs what is missing, builds dist/pgod and dist/pgoctl, makes a git repository of
# examples/demo with a key of yours in its ssh/ folder, and runs pgod on it in the foreground
# (Ctrl-C stops pgod and leaves the container running). The demo runs as its own non-root
# service user, as a team's service would, under pgod's compose policy; the script prints the
# pgoctl command that operates it.
# PGO_QUICKSTART_DIR (default /var/lib/pgo-quickstart) holds everything it makes;
# PGO_QUICKSTART_USER (default pgo-demo) is the service user, made when missing;
# PGO_QUICKSTART_NAME (default demo) the service's name; PGO_QUICKSTART_PREBUILT=1 skips the
# installs and the build (dist/ must hold pgod and pgoctl).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
q="${PGO_QUICKSTART_DIR:-/var/lib/pgo-quickstart}"
user="${PGO_QUICKSTART_USER:-pgo-demo}"
name="${PGO_QUICKSTART_NAME:-demo}"
ssh_listen="${PGO_QUICKSTART_SSH:-127.0.0.1:2222}"
if [ "${PGO_QUICKSTART_PREBUILT:-0}" != 1 ]; then
  bash scripts/deps.sh
  bun install --frozen-lockfile >/dev/null
  bash scripts/build.sh >/dev/null
fi
mkdir -p "$q"
chmod 0755 "$q" # the service user reads the repository below it

# The service user: a system account with no shell and no home (pgod gives it a private one).
if ! id -u "$user" >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
fi

# Your key for pgoctl: its public half goes into the demo repository's ssh/ folder.
[ -f "$q/id_$name" ] || ssh-keygen -q -t ed25519 -N '' -C "quickstart@$(hostname)" -f "$q/id_$name"

# The repository belongs to the service user (git refuses a repository owned by someone else),
# so the work clone, which is root's, pushes and fetches through git run as that user.
as_user="runuser -u $user --"
if [ ! -d "$q/$name.git" ]; then
  git init --quiet --bare -b main "$q/$name.git"
  rm -rf "$q/work"
fi
chown -R "$user:" "$q/$name.git"
if [ ! -d "$q/work/.git" ]; then
  git init --quiet -b main "$q/work"
  git -C "$q/work" remote add origin "$q/$name.git"
  cp -r "$top/examples/demo/." "$q/work/"
fi
git -C "$q/work" config remote.origin.receivepack "$as_user git-receive-pack"
git -C "$q/work" config remote.origin.uploadpack "$as_user git-upload-pack"
mkdir -p "$q/work/ssh"
cp "$q/id_$name.pub" "$q/work/ssh/quickstart.pub"
git -C "$q/work" add -A
if ! git -C "$q/work" diff --cached --quiet 2>/dev/null || ! git -C "$q/work" rev-parse -q --verify HEAD >/dev/null; then
  git -C "$q/work" -c user.name=pgo -c user.email=pgo@localhost commit --quiet -m "Demo service, with the quickstart's key in ssh/"
fi
git -C "$q/work" push --quiet origin HEAD:main

cat > "$q/pgo.toml" <<TOML
[[services]]
name = "$name"
user = "$user"
repository = "$q/$name.git"
TOML

host="${ssh_listen%:*}"
host="${host:-127.0.0.1}"
port="${ssh_listen##*:}"
cat >&2 <<MSG
quickstart: pgod runs the $name service as user $user from $q/$name.git (config $q/pgo.toml).
quickstart: operate it:   $top/dist/pgoctl -i $q/id_$name --known-hosts $q/known_hosts -p $port $host:$name//ps
quickstart: (other commands: ping, status, logs, history, exec web ls /www; see pgoctl(1))
quickstart: see it with:  docker ps --filter label=com.docker.compose.project=$name
quickstart: change it:    cd $q/work, edit www/index.html or compose.yaml, git commit -am x, git push
MSG
exec "$top/dist/pgod" -c "$q/pgo.toml" -d "$q/dir" --datadir "$q/data" -t "${PGO_QUICKSTART_INTERVAL:-10s}" \
  -s "$ssh_listen" -m "${PGO_QUICKSTART_METRICS:-127.0.0.1:9112}" "$@"
