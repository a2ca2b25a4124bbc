#!/usr/bin/env bash
# Installs everything pgo's build, quickstart and tests need on a Debian (bookworm) machine,
# as root, and starts the Docker engine when it is not running. Safe to run again: every step
# checks first and skips what is already there.
set -euo pipefail

BUN_VERSION="$(sed -n 's/.*"bun": *"\([0-9.]*\)".*/\1/p' "$(dirname "$0")/../package.json" | head -n 1)"
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
log() { printf 'deps: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

# Debian packages. apt-get update only when something is missing.
pkgs=(docker.io busybox-static git util-linux openssh-client openssh-server ca-certificates curl
      caddy docker-registry apache2-utils prometheus iproute2 man-db lintian systemd age)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1
fi
# The prometheus and docker-registry packages start nothing here (systemd is not PID 1), but
# make sure no stray daemon of theirs holds a port we use.

# Bun, pinned by package.json's engines.bun; it ships inside the npm package.
if ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if ! command -v bun >/dev/null || [ "$(bun --version)" != "$BUN_VERSION" ]; then
  log "installing bun $BUN_VERSION"
  npm install -g --silent "bun@$BUN_VERSION" >/dev/null
fi

# Docker Compose v2 plugin: not in bookworm; take trixie's static binary without touching
# the system's apt sources.
if [ ! -x "$COMPOSE_PLUGIN" ]; then
  log "installing the docker compose v2 plugin"
  t=$(mktemp -d); mkdir -p "$t/lists/partial"
  uri=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  [ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" > "$t/sources.list"
  o=(-oDir::State::Lists="$t/lists" -oDir::Etc::SourceList="$t/sources.list" -oDir::Etc::SourceParts=/dev/null)
  apt-get "${o[@]}" update -qq 2>/dev/null
  (cd "$t" && apt-get "${o[@]}" download docker-compose >/dev/null)
  dpkg -x "$t"/docker-compose_*.deb "$t/x"
  install -D "$t/x/usr/libexec/docker/cli-plugins/docker-compose" "$COMPOSE_PLUGIN"
  rm -rf "$t"
fi
# Both docker clients on the machine (/usr/bin and /usr/local/bin) look in /usr/local/lib.

# Docker engine.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start, see /var/log/dockerd.log"; exit 1; }
fi
getent group docker >/dev/null || groupadd --system docker

# A local busybox image (no image registry is reachable here).
if ! docker image inspect pgo-busybox:1 >/dev/null 2>&1; then
  log "building image pgo-busybox:1"
  r=$(mktemp -d)
  mkdir -p "$r/bin" "$r/tmp" "$r/www" "$r/etc"
  cp /bin/busybox "$r/bin/busybox"
  for a in sh sleep httpd echo cat ls id wget true false env date nc printf kill; do ln -s busybox "$r/bin/$a"; done
  echo 'hello from pgo' > "$r/www/index.html"
  echo 'root:x:0:0:root:/:/bin/sh' > "$r/etc/passwd"
  tar -C "$r" -c . | docker import -c 'CMD ["/bin/sh"]' - pgo-busybox:1 >/dev/null
  rm -rf "$r"
fi
# A local Caddy image made from Debian's caddy binary, the libraries ldd lists and the loader.
# /data and /config are Caddy's XDG data and config directories (certificates, autosave.json).
if ! docker image inspect pgo-caddy:1 >/dev/null 2>&1; then
  log "building image pgo-caddy:1"
  r=$(mktemp -d)
  mkdir -p "$r/usr/bin" "$r/etc/caddy" "$r/data" "$r/config" "$r/root" "$r/tmp"
  chmod 1777 "$r/tmp"
  cp /usr/bin/caddy "$r/usr/bin/caddy"
  for lib in $(ldd /usr/bin/caddy | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
  done
  echo 'root:x:0:0:root:/root:/usr/sbin/nologin' > "$r/etc/passwd"
  echo 'root:x:0:' > "$r/etc/group"
  printf ':80 {\n\trespond "pgo-caddy"\n}\n' > "$r/etc/caddy/Caddyfile"
  tar -C "$r" -c . | docker import \
    -c 'ENV PATH=/usr/bin:/bin HOME=/root XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config' \
    -c 'CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]' \
    - pgo-caddy:1 >/dev/null
  rm -rf "$r"
fi
log "ready: bun $(bun --version), $(docker compose version | head -n 1)"
