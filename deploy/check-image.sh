#!/usr/bin/env bash
# Builds the Dockerfile's image and checks it as a container runtime would run it:
#   - `cloudvpp --version` names the commit given as CLOUDVPP_COMMIT;
#   - the default command (ENTRYPOINT + CMD, unchanged) runs as uid 10001, not root;
#   - /healthz and /readyz answer 200 on both ports (8080: Apps and Books, 9000: MDM), and
#     /admin/login answers on 9000;
#   - the database appears in the volume, owned by 10001;
#   - `docker stop` (SIGTERM) ends it cleanly (exit 0) within the stop timeout;
#   - the image's size is printed (and the size of the final stage's own layers).
#
# Usage: deploy/check-image.sh [--local-bases] [--keep]
#   --local-bases  build stand-ins for the base images (rust:1-bookworm, debian:bookworm-slim)
#                  instead of pulling them: Debian's debootstrap for a bookworm minbase
#                  system, slimmed like debian:bookworm-slim, and this machine's own Rust
#                  toolchain (`rustc --print sysroot`) and CA bundle for the build stage.
#                  For machines that reach Debian's and crates.io but not an image registry.
#                  Needs root and debootstrap (apt-get install debootstrap).
#   --keep         keep the image, the base images and the work directory afterwards.
#
# Docker: the daemon `docker` reaches (DOCKER_HOST or its socket); with none reachable and
# when run as root with `dockerd` installed (Debian's docker.io), a private daemon is started
# for the check (its own socket, data root under the work directory, no bridge, no iptables
# rules) and stopped at the end.
#
# Traffic: the build reaches crates.io (cargo) and, with --local-bases, Debian's mirror; the
# checks speak only to the container's loopback (as root: `nsenter` into the container's
# network namespace, the container has no network at all) or, when not root, to ports
# published on 127.0.0.1. Bounded: every step has a timeout (the build
# CHECK_IMAGE_BUILD_TIMEOUT seconds, 5400 by default: a release build from scratch on 2 cores
# takes 15 to 30 minutes). Cleans up after itself (containers, volume, images it made, the
# private daemon and the work directory), also when a check fails.
#
# Runs from the repository's root (it finds it from its own path). Not part of .ci/run: it
# takes as long as a release build. See docs/OPERATIONS.md, Install, Container.

set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

local_bases=0
keep=0
for a in "$@"; do
  case "$a" in
    --local-bases) local_bases=1 ;;
    --keep) keep=1 ;;
    -h | --help)
      sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $a (see --help)" >&2
      exit 2
      ;;
  esac
done

build_timeout=${CHECK_IMAGE_BUILD_TIMEOUT:-5400}
tag="cloudvpp-check-image:$$"
name="cloudvpp-check-image-$$"
volume="cloudvpp-check-image-$$"
work="$root/target/check-image.$$"
mkdir -p "$work"
dockerd_pid=
exec_root="/tmp/cloudvpp-check-image-$$.exec"
made_bases=()

log() { printf '[check-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() {
  log "FAILED: $*"
  exit 1
}

cleanup() {
  local rc=$?
  set +e
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    if [ "$rc" != 0 ] && docker container inspect "$name" >/dev/null 2>&1; then
      log "the container's log:"
      docker logs "$name" 2>&1 | tail -n 20 >&2
    fi
    docker rm -f "$name" >/dev/null 2>&1
    docker volume rm -f "$volume" >/dev/null 2>&1
    if [ "$keep" = 0 ]; then
      docker rmi -f "$tag" >/dev/null 2>&1
      for b in "${made_bases[@]}"; do docker rmi -f "$b" >/dev/null 2>&1; done
      # The build stage's image (untagged), not any other untagged image the daemon had.
      if [ -f "$work/dangling.before" ]; then
        docker images -q --no-trunc -f dangling=true | sort -u |
          comm -13 "$work/dangling.before" - | xargs -r docker rmi -f >/dev/null 2>&1
      fi
    fi
  fi
  if [ -n "$dockerd_pid" ]; then
    log "stopping the private Docker daemon ($dockerd_pid)"
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$dockerd_pid" 2>/dev/null
  fi
  # Whatever is left mounted under the work directory (the daemon's data root, debootstrap's
  # /proc) or the daemon's exec root (network namespaces).
  awk '{ print $2 }' /proc/mounts | grep -E "^($work|$exec_root)/" | sort -r |
    while read -r m; do umount -l "$m"; done
  [ -n "$dockerd_pid" ] && rm -rf "$exec_root"
  if [ "$keep" = 0 ]; then
    rm -rf "$work"
  fi
  if [ "$rc" = 0 ]; then log "all checks passed"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v docker >/dev/null || fail "no docker command (Debian: apt-get install docker.io)"

# ---- A Docker daemon ----
if ! timeout 20 docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null ||
    fail "no Docker daemon reachable, and none can be started here (needs root and dockerd)"
  sock="/tmp/cloudvpp-check-image-$$.sock"
  mkdir -p "$work/docker" "$exec_root"
  log "no Docker daemon reachable: starting a private one (log: $work/dockerd.log)"
  dockerd -H "unix://$sock" --data-root "$work/docker" \
    --exec-root "$exec_root" --pidfile "$work/dockerd.pid" \
    --iptables=false --ip6tables=false --bridge=none >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$sock"
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || fail "dockerd exited: $(tail -n 5 "$work/dockerd.log")"
    sleep 1
  done
  docker info >/dev/null 2>&1 || fail "dockerd did not answer within 60 s"
fi
log "Docker $(docker version --format '{{.Server.Version}}')"

# ---- Base images ----
if [ "$local_bases" = 1 ]; then
  [ "$(id -u)" = 0 ] || fail "--local-bases needs root (debootstrap)"
  command -v debootstrap >/dev/null || fail "--local-bases needs debootstrap (apt-get install debootstrap)"
  sysroot=$(rustc --print sysroot)
  [ -x "$sysroot/bin/cargo" ] || fail "no cargo in $sysroot"
  rootfs="$work/bookworm"
  log "debootstrap --variant=minbase bookworm (log: $work/debootstrap.log)"
  timeout 1200 debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
    >"$work/debootstrap.log" 2>&1 || fail "debootstrap: $(tail -n 5 "$work/debootstrap.log")"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  # debootstrap leaves the packages it installed in apt's cache.
  rm -f "$rootfs/var/cache/apt/archives/"*.deb
  path_env='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  # The build stage: the minbase system, a C compiler and linker (ring, SQLite), this
  # machine's Rust toolchain as /usr/local/rust.
  tar -C "$rootfs" -c . | docker import --change "$path_env" - cloudvpp-check-image/minbase:$$ >/dev/null
  made_bases+=("cloudvpp-check-image/minbase:$$")
  docker rm -f "$name-rust" >/dev/null 2>&1 || true
  timeout 900 docker run --network host --name "$name-rust" cloudvpp-check-image/minbase:$$ \
    sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev binutils ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*' \
    >"$work/rust-base.log" 2>&1 || fail "the rust stand-in: $(tail -n 5 "$work/rust-base.log")"
  docker cp "$sysroot/." "$name-rust:/usr/local/rust" >/dev/null
  # cargo trusts what this machine trusts (a TLS-inspecting proxy's own CA, say).
  docker cp /etc/ssl/certs/ca-certificates.crt "$name-rust:/etc/ssl/certs/ca-certificates.crt"
  docker commit \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    "$name-rust" rust:1-bookworm >/dev/null
  docker rm -f "$name-rust" >/dev/null
  made_bases+=("rust:1-bookworm")
  log "rust:1-bookworm stand-in: $(docker run --rm rust:1-bookworm cargo --version)"
  # The run stage: what debian:bookworm-slim leaves out (docs, man pages, locales but C and
  # English, apt's lists), the same dpkg rules so later installs leave them out too.
  mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
  # apt's settings of debian:bookworm-slim: no package cache, no translations, gzipped lists.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'APT::AutoRemove::SuggestsImportant "false";' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/groff/"* "$rootfs/usr/share/info/"* \
    "$rootfs/usr/share/lintian/"* "$rootfs/usr/share/linda/"* "$rootfs/var/cache/apt/"*.bin \
    "$rootfs/var/lib/apt/lists/"*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -f "$rootfs/etc/resolv.conf"
  tar -C "$rootfs" -c . | docker import --change "$path_env" --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  made_bases+=("debian:bookworm-slim")
  log "debian:bookworm-slim stand-in: $(docker image inspect -f '{{.Size}}' debian:bookworm-slim | numfmt --to=iec) "
  rm -rf "$rootfs"
fi

# ---- Build ----
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
log "docker build (commit $commit; at most ${build_timeout} s; log: $work/build.log)"
start=$(date +%s)
docker images -q --no-trunc -f dangling=true | sort -u >"$work/dangling.before"
# Host network for the build's RUN steps (crates.io, Debian's mirror): the private daemon
# has no bridge.
if ! timeout "$build_timeout" docker build --network host --build-arg "CLOUDVPP_COMMIT=$commit" \
  -t "$tag" . >"$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log" >&2
  fail "docker build"
fi
log "built in $(($(date +%s) - start)) s"
size=$(docker image inspect -f '{{.Size}}' "$tag")
base_size=$(docker image inspect -f '{{.Size}}' debian:bookworm-slim 2>/dev/null || echo 0)
log "image size: $size bytes ($(numfmt --to=iec "$size")); over debian:bookworm-slim: $(numfmt --to=iec $((size - base_size)))"
docker history --format '{{.Size}}\t{{.CreatedBy}}' "$tag" | head -n 12 | cut -c1-120 >&2

# ---- Checks ----
version=$(timeout 30 docker run --rm "$tag" --version)
log "--version: $version"
case "$version" in *"$commit"*) ;; *) fail "--version does not name $commit" ;; esac
[ "$(docker image inspect -f '{{.Config.User}}' "$tag")" = "10001:10001" ] || fail "the image's USER is not 10001:10001"

key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
if [ "$(id -u)" = 0 ] && command -v nsenter >/dev/null; then
  # No network at all: the checks enter the container's own network namespace, where the
  # default command's 0.0.0.0 listeners are reached on its loopback.
  docker run -d --name "$name" --network none -v "$volume:/var/lib/cloudvpp" \
    -e CLOUDVPP_API_KEY="$key" "$tag" >/dev/null
  pid=$(docker inspect -f '{{.State.Pid}}' "$name")
  probe() { nsenter -t "$pid" -n curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$1$2" || true; }
  ab=8080 mdm=9000
else
  docker run -d --name "$name" -p 127.0.0.1::8080 -p 127.0.0.1::9000 -v "$volume:/var/lib/cloudvpp" \
    -e CLOUDVPP_API_KEY="$key" "$tag" >/dev/null
  probe() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$1$2" || true; }
  ab=$(docker port "$name" 8080/tcp | head -n 1 | sed 's/.*://')
  mdm=$(docker port "$name" 9000/tcp | head -n 1 | sed 's/.*://')
fi
ready=0
for _ in $(seq 1 60); do
  if [ "$(probe "$ab" /readyz)" = 200 ] && [ "$(probe "$mdm" /readyz)" = 200 ]; then
    ready=1
    break
  fi
  [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container exited"
  sleep 1
done
[ "$ready" = 1 ] || fail "not ready within 60 s"
for port in "$ab" "$mdm"; do
  for path in /healthz /readyz; do
    code=$(probe "$port" "$path")
    log "port $port $path: $code"
    [ "$code" = 200 ] || fail "$path on $port answered $code"
  done
done
code=$(probe "$mdm" /admin/login)
log "port $mdm /admin/login: $code"
[ "$code" = 200 ] || fail "/admin/login answered $code"
status="/proc/$(docker inspect -f '{{.State.Pid}}' "$name")/status"
if [ -r "$status" ]; then
  # The container's main process, seen from this machine (the daemon is local).
  uid=$(awk '/^Uid:/ { print $2 }' "$status")
else
  uid=$(docker exec "$name" id -u)
fi
log "the process runs as uid $uid"
[ "$uid" = 10001 ] || fail "the process runs as uid $uid, not 10001"
owner=$(docker exec "$name" stat -c '%u:%g %a %n' /var/lib/cloudvpp/cloudvpp.db)
log "database: $owner"
case "$owner" in "10001:10001 600 "*) ;; *) fail "the database is not 10001's, mode 0600" ;; esac
# stderr is the log: JSON lines (--log-format json) once logging is set up.
docker logs "$name" 2>&1 >/dev/null | grep -q '^{.*"mdm service started"' ||
  fail "no JSON log line \"mdm service started\""
log "docker stop (SIGTERM)"
timeout 40 docker stop -t 20 "$name" >/dev/null
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
log "exit code after SIGTERM: $exit_code"
[ "$exit_code" = 0 ] || fail "exit code $exit_code after SIGTERM"
docker logs "$name" 2>&1 | grep -q '"stopped' || log "note: no \"stopped\" line in the log"
