#!/usr/bin/env bash
# Builds dist/pgo_<version>_<arch>.deb with dpkg-deb from dist/pgod and dist/pgoctl, building
# them first (scripts/build.sh) when they are missing or report another version.
#
# The version is PGO_VERSION, else `git describe --tags --always --dirty`, made into a valid
# Debian version (see debian_upstream below) plus the revision PGO_DEB_REVISION (default 1).
# PGO_MAINTAINER sets the Maintainer field, PGO_DEB_COMPRESS dpkg-deb's compression options.
# Prints the path of the .deb on stdout. `build-deb.sh --debian-version V` only prints the
# Debian upstream version made from V.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'package: %s\n' "$*" >&2; }

# A Debian upstream version from a git-describe style version: "v1.2.0" -> "1.2.0",
# "v1.2.0-3-gabc1234" -> "1.2.0+git3.gabc1234", "1.3.0-rc1" -> "1.3.0~rc1" (sorts before
# 1.3.0), a bare commit "abc1234" -> "<package.json version>~git<commits>.gabc1234", and a
# "-dirty" suffix -> "+dirty".
debian_upstream() {
  local v="$1" base="$2" dirty="" count
  [[ "$v" =~ ^v[0-9] ]] && v="${v#v}"
  if [[ "$v" == *-dirty ]]; then dirty="+dirty"; v="${v%-dirty}"; fi
  if [[ "$v" =~ ^[0-9a-f]{7,40}$ ]] && git cat-file -e "$v^{commit}" 2>/dev/null; then
    count=$(git rev-list --count "$v")
    v="${base}~git${count}.g${v}"
  elif [[ "$v" =~ ^[0-9] ]]; then
    if [[ "$v" =~ ^(.*)-([0-9]+)-g([0-9a-f]+)$ ]]; then
      v="${BASH_REMATCH[1]}+git${BASH_REMATCH[2]}.g${BASH_REMATCH[3]}"
    fi
    v="${v//-/\~}"
  else
    v="${base}~${v}"
  fi
  v="${v}${dirty}"
  # Anything else that Debian does not allow in a version becomes a dot.
  printf '%s\n' "$v" | sed 's/[^A-Za-z0-9.+~]/./g'
}

base=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' package.json | head -n 1)
if [ "${1:-}" = "--debian-version" ]; then
  debian_upstream "${2:?a version}" "${base:-0}"
  exit 0
fi

for tool in dpkg-deb dpkg-shlibdeps gzip md5sum; do
  command -v "$tool" >/dev/null || { log "cannot find \"$tool\": apt-get install dpkg-dev"; exit 1; }
done

wanted="${PGO_VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo unknown)}"
have() { [ -x "dist/$1" ] && [ "$("dist/$1" -v 2>/dev/null)" = "$1 $wanted" ]; }
if ! have pgod || ! have pgoctl; then
  log "building dist/pgod and dist/pgoctl ($wanted)"
  PGO_VERSION="$wanted" bash scripts/build.sh >&2
fi
have pgod && have pgoctl || { log "dist/pgod or dist/pgoctl does not report version \"$wanted\""; exit 1; }

version="$(debian_upstream "$wanted" "${base:-0}")-${PGO_DEB_REVISION:-1}"
dpkg --validate-version "$version" || { log "not a valid Debian version: \"$version\""; exit 1; }
arch=$(dpkg --print-architecture)
maintainer="${PGO_MAINTAINER:-pgo maintainers <pgo@example.org>}"
# Reproducible dates: the last commit's, unless SOURCE_DATE_EPOCH says otherwise.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"

root=$(mktemp -d "${TMPDIR:-/tmp}/pgo-deb.XXXXXX")
shl=$(mktemp -d "${TMPDIR:-/tmp}/pgo-shlibs.XXXXXX")
trap 'rm -rf "$root" "$shl"' EXIT
chmod 0755 "$root"
doc="$root/usr/share/doc/pgo"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc" \
  "$root/usr/share/man/man1" "$root/usr/share/man/man8" "$doc/examples" \
  "$root/usr/share/lintian/overrides" "$root/var/lib/pgo"
chmod 0711 "$root/var/lib/pgo"   # as pgod and the unit's StateDirectoryMode= keep it
# The executables must not be stripped: bun build --compile appends the program to the runtime.
install -m 0755 dist/pgod dist/pgoctl "$root/usr/bin/"
install -m 0644 packaging/pgod.service "$root/lib/systemd/system/pgod.service"
# 0640 root:root: the config holds registry tokens, env values, webhook secrets and tokens in
# repository URLs (pgod warns at start when other users can read it).
install -m 0640 packaging/pgo.toml "$root/etc/pgo.toml"
gzip -9n < man/pgod.8 > "$root/usr/share/man/man8/pgod.8.gz"
gzip -9n < man/pgoctl.1 > "$root/usr/share/man/man1/pgoctl.1.gz"
install -m 0644 packaging/debian/copyright "$doc/copyright"
install -m 0644 examples/pgo.toml "$doc/examples/pgo.toml"
install -m 0644 README.md "$doc/README.md"
install -m 0644 packaging/debian/lintian-overrides "$root/usr/share/lintian/overrides/pgo"

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
{
  printf 'pgo (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Built from pgo %s (commit %s).\n\n' "$wanted" "$commit"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$doc/changelog.Debian.gz"

# libc6's minimum version from the symbols the executables use.
mkdir "$shl/debian"
printf 'Source: pgo\n\nPackage: pgo\nArchitecture: any\n' > "$shl/debian/control"
libc=$(cd "$shl" && dpkg-shlibdeps -O "$root/usr/bin/pgod" "$root/usr/bin/pgoctl" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$libc" ] || { log "dpkg-shlibdeps found no library dependencies"; exit 1; }

install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
  -e "s|@INSTALLED_SIZE@|$size|" -e "s|@LIBC@|$libc|" packaging/debian/control.in > "$root/DEBIAN/control"
# Conffiles stay out of md5sums, as with dh_md5sums: dpkg keeps their sums with the conffiles.
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles) \
  | LC_ALL=C sort | tr '\n' '\0' | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
find "$root" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

out="dist/pgo_${version}_${arch}.deb"
rm -f dist/pgo_*.deb
# The two executables are about 110 MB each. gzip -1 packs them in seconds (a 110 MB .deb);
# dpkg's default, xz -6, takes minutes on two cores for an 80 MB one (PGO_DEB_COMPRESS=-Zxz).
# zstd would be both fast and small, but bookworm's lintian calls such a .deb malformed.
# shellcheck disable=SC2086
dpkg-deb --root-owner-group ${PGO_DEB_COMPRESS:--Zgzip -z1} --threads-max="$(nproc)" --build "$root" "$out" >&2
log "built $out"
echo "$out"
