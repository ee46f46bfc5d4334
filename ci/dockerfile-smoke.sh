#!/usr/bin/env bash
# Build the project's Dockerfile with podman and run the image for real; no image registry needed.
# Usage (as root): bash ci/dockerfile-smoke.sh [context-dir]
# Checks: it answers, the HEALTHCHECK passes, it runs as non-root, and `podman stop` (SIGTERM to PID 1)
# ends it gracefully: quickly, with exit code 0 and the app's lifespan shutdown in the log.
set -euo pipefail
CTX=${1:-.}
BASE=localhost/kestrelpy-python-base:bookworm   # stands in for python:3.x-slim, built from Debian packages
TAG=localhost/kestrelpy:ci-smoke
NAME=kestrelpy-smoke-$$
PORT=${SMOKE_PORT:-18080}
WORK=$(mktemp -d)
cleanup() { podman rm -f "$NAME" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
t0=$(date +%s)
say() { echo "[smoke +$(( $(date +%s) - t0 ))s] $*"; }

# 1. Tools: podman and buildah, runc (crun cannot run on hybrid-cgroup hosts) and mmdebstrap for the base.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null \
   || ! command -v curl >/dev/null; then
  say "installing podman buildah runc mmdebstrap curl"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman runc mmdebstrap curl >/dev/null
fi

# 2. Engine settings: runc, and container ulimits no higher than this host's hard limits
#    (without CAP_SYS_RESOURCE podman's default of 1048576 is refused).
NOFILE=$(ulimit -Hn); NPROC=$(ulimit -Hu)
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 1048576 ]; then NOFILE=1048576; fi
if [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ]; then NPROC=32768; fi
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"

# 3. A local base image from Debian packages, kept in podman's store for later runs. The host's extra CA
#    certificates go in so pip can verify the package index through a TLS-inspecting proxy.
#    This image is for CI only: never push it, nor anything built on it.
if ! podman image exists "$BASE"; then
  say "building $BASE with mmdebstrap"
  SOURCES=/etc/apt/sources.list.d/debian.sources
  [ -e "$SOURCES" ] || SOURCES=http://deb.debian.org/debian
  mmdebstrap --quiet --variant=apt --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do if [ -e "$c" ]; then cp "$c" "$1/usr/local/share/ca-certificates/"; fi; done; chroot "$1" update-ca-certificates >/dev/null 2>&1' \
    bookworm "$WORK/base.tar" "$SOURCES" </dev/null
  podman import --quiet --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
fi

# 4. Build the real Dockerfile. --format docker keeps the HEALTHCHECK (the OCI format drops it);
#    chroot isolation needs no OCI runtime for RUN steps and uses the host network.
say "building $TAG"
podman build --quiet --isolation chroot --network host --format docker \
  --build-arg BASE_IMAGE="$BASE" -t "$TAG" "$CTX" >/dev/null

# 5. Run, probe, stop.
pass=0; fail=0
check() { if "$@" >/dev/null 2>&1; then pass=$((pass+1)); say "ok   $*"; else fail=$((fail+1)); say "FAIL $*"; fi; }
podman run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" "$TAG" >/dev/null 2>"$WORK/run.err" \
  || { cat "$WORK/run.err"; exit 1; }  # stderr also carries harmless "no systemd" healthcheck-timer noise
for _ in $(seq 1 50); do  # up to ~10 s for readiness; give up early if the container died
  curl -fsS -m 2 "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 0.2
done
check curl -fsS -m 5 "http://127.0.0.1:$PORT/healthz"
check grep -q 'Hello, world!' <(curl -fsS -m 5 "http://127.0.0.1:$PORT/")
check podman healthcheck run "$NAME"
uid=$(podman exec "$NAME" id -u 2>/dev/null || echo 0)
check test "$uid" -gt 0                                       # the container user is not root
check grep -q '"uid": 10001' <(curl -fsS -m 5 "http://127.0.0.1:$PORT/whoami")  # nor is kestrelpy
check test "$(podman exec "$NAME" cat /proc/1/comm 2>/dev/null)" != sh  # kestrelpy itself is PID 1
s=$(date +%s%N); podman stop -t 10 "$NAME" >/dev/null 2>&1; e=$(date +%s%N)
ms=$(( (e - s) / 1000000 )); say "podman stop took $ms ms"
check test "$ms" -lt 5000                                     # SIGTERM handled (no SIGKILL after 10 s)
check test "$(podman inspect -f '{{.State.ExitCode}}' "$NAME")" = 0
podman logs "$NAME" > "$WORK/log" 2>&1 || true
check grep -q 'Listening on http://0.0.0.0:8080' "$WORK/log"
check grep -q 'Application shutdown complete' "$WORK/log"
[ "$fail" -eq 0 ] || tail -30 "$WORK/log"
echo "dockerfile-smoke: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
