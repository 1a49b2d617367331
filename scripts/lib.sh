# Shared helpers for scripts/setup, scripts/run and scripts/test (sourced, not run).
# Everything here is idempotent: it checks before it installs or starts anything.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREVIEW_VENV:-$ROOT/.venv}"
STATE="${PREVIEW_STATE_DIR:-$ROOT/.state}"
case "$STATE" in /*) ;; *) STATE="$ROOT/$STATE" ;; esac

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root for: $*  (install it yourself, then re-run)"; return 1; fi
}

# ensure_pkg COMMAND DEBIAN-PACKAGE...: install the packages when COMMAND is missing.
ensure_pkg() {
  local cmd="$1"; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null; then
    say "missing '$cmd': install $* with your package manager"; return 1
  fi
  say "installing $* (for '$cmd')"
  if [ ! -f "$STATE/.apt-updated" ] || [ -n "$(find "$STATE/.apt-updated" -mmin +1440 2>/dev/null)" ]; then
    as_root apt-get update -qq && ensure_private "$STATE" && touch "$STATE/.apt-updated"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
  # The checkout's path is part of the stamp: the project is installed editable, so a
  # venv installed from another checkout imports that checkout's code (and, once that
  # one is gone, nothing: `python -m supervisor.fsworker` failed in a venv so moved).
  local stamp="$VENV/.installed-$({ cat "$ROOT/pyproject.toml"; echo "$ROOT"; } | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  ensure_pkg python3 python3 python3-venv
  [ -x "$VENV/bin/python" ] || { say "creating virtualenv $VENV"; python3 -m venv "$VENV"; }
  say "installing Python dependencies"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q -e "$ROOT[test]"
  rm -f "$VENV"/.installed-* && touch "$stamp"
}

docker_ok() { docker info >/dev/null 2>&1; }

# Local state holds secrets (the dev Redis password, its append-only file with every key,
# the gateway's spooled records): our user's alone. ensure_private DIR...: create each
# 0700, and take group/other access off whatever an older version left in it.
ensure_private() {
  local dir
  for dir in "$@"; do
    (umask 077 && mkdir -p "$dir")
    chmod -R go-rwx "$dir"
  done
}

# The checkout's own Redis (scripts/run): password-protected, append-only, on loopback and
# the Docker bridge (containers log in as their own ACL users), every file it writes 0600
# in 0700 directories. Port: PREVIEW_LOCAL_REDIS_PORT (6379). Sets REDIS_PORT, REDIS_PASSWORD.
ensure_local_redis() {
  local dir="$STATE/redis" bridge
  ensure_private "$STATE" "$dir"
  [ -s "$dir/password" ] ||
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$dir/password")
  REDIS_PASSWORD="$(cat "$dir/password")"
  REDIS_PORT="${PREVIEW_LOCAL_REDIS_PORT:-6379}"
  _our_redis && return 0
  # Something else on the port (the system's redis-server, another checkout's) would
  # make our start fail quietly and the gateway refuse every login: say so instead.
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    say "port $REDIS_PORT answers as a Redis that is not this checkout's (password differs):"
    say "stop it, or choose another port: PREVIEW_LOCAL_REDIS_PORT=6390 scripts/run"
    return 1
  fi
  bridge="$(bridge_ip)"
  say "starting redis-server on 127.0.0.1${bridge:+,$bridge}:$REDIS_PORT"
  # The password goes in through stdin (a config file read from "-"), not argv: argv is
  # world-readable in /proc. umask 077: the files Redis creates are ours alone.
  printf 'requirepass %s\n' "$REDIS_PASSWORD" | (umask 077 && redis-server - \
    --port "$REDIS_PORT" --bind "127.0.0.1${bridge:+ $bridge}" \
    --dir "$dir" --daemonize yes --logfile "$dir/redis.log" \
    --pidfile "$dir/redis.pid" --save "" --appendonly yes >/dev/null)
  local _
  for _ in $(seq 50); do _our_redis && return 0; sleep 0.2; done
  say "redis-server did not start:"; tail -5 "$dir/redis.log" >&2
  return 1
}

_our_redis() {
  REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
}

# The engine we start keeps its data on btrfs, so that each container's writable layer can
# be held to PREVIEW_CONTAINER_DISK_MB by the kernel (btrfs qgroups, Docker's `size` storage
# option); this kernel-independent route is needed because overlay2's quota needs XFS project
# quotas, which many kernels (this one included) lack. When the data root is not on btrfs
# already, a sparse loop-mounted image file holds it. Its quotas are btrfs *simple* quotas
# (Linux 6.7+; scripts/btrfs-quota says why full qgroup accounting does not hold).
DOCKER_DATA_ROOT="${PREVIEW_DOCKER_DATA_ROOT:-/var/lib/preview-gateway/docker}"
DOCKER_FS_IMAGE="${PREVIEW_DOCKER_FS_IMAGE:-/var/lib/preview-gateway/docker.btrfs}"
DOCKER_FS_GB="${PREVIEW_DOCKER_FS_GB:-64}"

ensure_btrfs_root() {
  ensure_pkg mkfs.btrfs btrfs-progs
  mkdir -p "$DOCKER_DATA_ROOT"
  [ "$(stat -f -c %T "$DOCKER_DATA_ROOT")" = btrfs ] && return 0
  if [ ! -f "$DOCKER_FS_IMAGE" ]; then
    say "creating a ${DOCKER_FS_GB} GiB sparse btrfs image for Docker's data: $DOCKER_FS_IMAGE"
    mkdir -p "$(dirname "$DOCKER_FS_IMAGE")"
    truncate -s "${DOCKER_FS_GB}G" "$DOCKER_FS_IMAGE"
    mkfs.btrfs -q "$DOCKER_FS_IMAGE" >/dev/null
  fi
  mount -o loop "$DOCKER_FS_IMAGE" "$DOCKER_DATA_ROOT"
}

# Simple quotas on the engine's btrfs, before (or whatever) Docker enabled: idempotent.
# Docker cannot delete a removed container's quota group (still in use while the kernel
# drops the subvolume; it logs "Failed to delete btrfs qgroup"): the empty ones go here.
ensure_btrfs_quota() {
  local root="$1"
  [ "$(stat -f -c %T "$root" 2>/dev/null)" = btrfs ] || return 0
  if as_root python3 "$ROOT/scripts/btrfs-quota" "$root" >&2; then
    as_root btrfs qgroup clear-stale "$root" >/dev/null 2>&1 || true
    return 0
  fi
  say "containers cannot be held to PREVIEW_CONTAINER_DISK_MB on this kernel: set it to 0, or run Docker on overlay2 over XFS mounted with pquota"
  return 0
}

ensure_dockerd() {
  ensure_pkg dockerd docker.io
  if docker_ok; then
    if [ "$(docker info -f '{{.Driver}}' 2>/dev/null)" = btrfs ]; then
      ensure_btrfs_quota "$(docker info -f '{{.DockerRootDir}}' 2>/dev/null)"
    else
      say "note: the running Docker engine does not use btrfs: it cannot hold containers to PREVIEW_CONTAINER_DISK_MB (set it to 0 there, or let scripts/setup start the engine)"
    fi
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then say "Docker engine not running: start it (e.g. 'sudo systemctl start docker')"; return 1; fi
  ensure_btrfs_root
  ensure_btrfs_quota "$DOCKER_DATA_ROOT"
  say "starting dockerd (data on btrfs at $DOCKER_DATA_ROOT)"
  ensure_private "$STATE"
  # setsid: the engine outlives this script and is not killed with its process group.
  (umask 077 && setsid dockerd --data-root "$DOCKER_DATA_ROOT" --storage-driver btrfs \
    >"$STATE/dockerd.log" 2>&1 < /dev/null &)
  local i
  for i in $(seq 1 60); do docker_ok && return 0; sleep 0.5; done
  say "dockerd did not come up; last lines of $STATE/dockerd.log:"; tail -20 "$STATE/dockerd.log" >&2
  return 1
}

# The address containers reach the host at (the default bridge's gateway).
bridge_ip() {
  local name ip
  name="$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null)"
  ip="$(ip -4 -o addr show "${name:-docker0}" 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)"
  [ -n "$ip" ] || ip="$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null | head -1)"
  echo "$ip"
}

ensure_image() {
  "$ROOT/scripts/build-image" | tail -1
}

# scripts/run's own secrets (PREVIEW_JWT_SECRET, PREVIEW_SIGNING_SECRET): generated once into
# $STATE/secrets (0600 files in a 0700 directory) and reused, so tokens and preview cookies
# outlive a restart; a value already in the environment wins. The built-in defaults are
# published in the source: a gateway on them refuses to listen beyond loopback.
ensure_local_secrets() {
  local dir="$STATE/secrets" name var
  (umask 077 && mkdir -p "$dir") && chmod 700 "$dir"
  for name in jwt_secret signing_secret; do
    [ -s "$dir/$name" ] || (umask 077 &&
      head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$dir/$name.new" &&
      mv "$dir/$name.new" "$dir/$name")
    var="PREVIEW_${name^^}"
    [ -n "${!var:-}" ] || export "$var=$(cat "$dir/$name")"
  done
}

# Record the PREVIEW_* settings this run passes (the Redis URL with its password, the
# secrets) in $STATE/run.env, 0600: previewctl in another shell reads what it lacks there.
write_run_env() {
  (umask 077 && env | grep -E '^PREVIEW_[A-Z0-9_]+=' | sort > "$STATE/run.env.new" &&
    mv "$STATE/run.env.new" "$STATE/run.env")
}

# scripts/run's TLS: a local CA (made once, kept in $STATE/tls, 0700) and a certificate it
# signs for *.$PREVIEW_DOMAIN, the domain itself, the API host, localhost and 127.0.0.1,
# made again when the names change or it expires within a day. Sets PREVIEW_TLS_CERT and
# PREVIEW_TLS_KEY unless they are set already. Idempotent: nothing is redone otherwise.
ensure_local_tls() {
  local dir="$STATE/tls" domain="${PREVIEW_DOMAIN:-preview.localhost}" api names
  api="$(printf '%s' "${PREVIEW_PUBLIC_URL:-http://localhost}" | sed -E 's#^[a-z]+://##; s#[:/].*$##')"
  names="DNS:*.$domain,DNS:$domain,DNS:localhost,IP:127.0.0.1"
  case "$api" in ''|localhost|127.0.0.1) ;; *[!0-9.]*) names="$names,DNS:$api" ;; *) names="$names,IP:$api" ;; esac
  [ -n "${PREVIEW_TLS_CERT:-}" ] && return 0
  ensure_pkg openssl openssl
  ensure_private "$dir"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  if [ ! -s "$dir/ca.key" ] || [ ! -s "$dir/ca.pem" ]; then
    say "creating a local certificate authority in $dir"
    (umask 077 && openssl req -x509 "${ec[@]}" -days 825 -keyout "$dir/ca.key" -out "$dir/ca.pem" \
      -subj "/CN=preview-gateway local CA ($(hostname))" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      2>/dev/null)
    rm -f "$dir/cert.pem"
  fi
  if [ ! -s "$dir/cert.pem" ] || [ "$(cat "$dir/cert.names" 2>/dev/null)" != "$names" ] ||
     ! openssl x509 -checkend 86400 -noout -in "$dir/cert.pem" >/dev/null 2>&1; then
    say "creating a certificate for $names"
    # 397 days: browsers refuse longer-lived server certificates.
    (umask 077 &&
      openssl req -new "${ec[@]}" -keyout "$dir/key.pem" -out "$dir/cert.csr" -subj "/CN=*.$domain" 2>/dev/null &&
      printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' \
        "$names" > "$dir/cert.ext" &&
      openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 397 -sha256 -extfile "$dir/cert.ext" -out "$dir/cert.pem" 2>/dev/null &&
      printf '%s' "$names" > "$dir/cert.names")
    rm -f "$dir/cert.csr"
  fi
  export PREVIEW_TLS_CERT="$dir/cert.pem" PREVIEW_TLS_KEY="$dir/key.pem"
}
