#!/usr/bin/env bash
# Why this exists: volguard's integration tests run against REAL components (a
# real dockerd, later real S3 servers; see DESIGN.md §6/§7), and a fresh CI
# machine has none of them. This script brings a Debian 12 host to the state
# the tests expect, and is safe to run any number of times:
#   1. installs the Debian packages the tests use (only when one is missing),
#   2. starts dockerd with networking off when no daemon answers (an already
#      running daemon is used as is), and leaves it running,
#   3. builds the tiny offline image volguard-test/busybox:latest if absent
#      (no registry is reachable, so it is made with `docker import`).
# Tests FAIL (they do not skip) when this environment is missing.
set -euo pipefail

readonly PACKAGES=(docker.io restic busybox-static attr acl zstd util-linux)
readonly IMAGE="volguard-test/busybox:latest"
readonly STATE_DIR="${HOME}/.cache/volguard"
readonly DOCKERD_LOG="${STATE_DIR}/dockerd.log"
readonly DOCKERD_WAIT_SECS=60
IMAGE_TMP=""

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing; run as root"
    SUDO=(sudo)
fi

mkdir -p "${STATE_DIR}"

# --- 1. Debian packages -------------------------------------------------------
install_packages() {
    local missing=() pkg status
    for pkg in "${PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)"
        [[ "${status}" == "install ok installed" ]] || missing+=("${pkg}")
    done
    if ((${#missing[@]} == 0)); then
        log "packages: all present (${PACKAGES[*]})"
        return
    fi
    # Recommends stay on: the verified setup (DESIGN.md §7) had them
    # (cgroupfs-mount, apparmor, ...).
    log "packages: installing ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

# --- 2. dockerd -----------------------------------------------------------------
# `docker info` alone is not a reliable probe (some client versions exit 0 with
# only a server error printed), so require a non-empty server version.
docker_answers() {
    local v
    v="$(docker info --format '{{.ServerVersion}}' 2>/dev/null)" || return 1
    [[ -n "${v}" && "${v}" != "<no value>" ]]
}

start_dockerd() {
    if docker_answers; then
        log "dockerd: already answering (server $(docker info --format '{{.ServerVersion}}'))"
        return
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found although docker.io is installed"
    if pgrep -x dockerd >/dev/null 2>&1; then
        # A daemon is starting (or stuck): starting a second one would only fail
        # on its pid file, so wait for the existing one.
        log "dockerd: a dockerd process exists (pid $(pgrep -x dockerd | tr '\n' ' ')) but does not answer yet; waiting"
    else
        log "dockerd: starting (networking off), log: ${DOCKERD_LOG}"
        printf '\n=== %s setup.sh starting dockerd ===\n' "$(date -Is)" >>"${DOCKERD_LOG}"
        # Networking off exactly as DESIGN.md §7 says: no iptables, no bridge.
        "${SUDO[@]}" setsid dockerd --iptables=false --ip6tables=false --bridge=none \
            </dev/null >>"${DOCKERD_LOG}" 2>&1 &
        disown || true
    fi
    local waited=0
    while ! docker_answers; do
        if ((waited >= DOCKERD_WAIT_SECS)); then
            log "dockerd: no answer after ${DOCKERD_WAIT_SECS}s; last lines of ${DOCKERD_LOG}:"
            tail -n 40 "${DOCKERD_LOG}" >&2 || true
            die "dockerd did not answer 'docker info' within ${DOCKERD_WAIT_SECS}s"
        fi
        if ! pgrep -x dockerd >/dev/null 2>&1 && ((waited >= 2)); then
            log "dockerd: the process exited; last lines of ${DOCKERD_LOG}:"
            tail -n 40 "${DOCKERD_LOG}" >&2 || true
            die "dockerd exited during startup"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "dockerd: answering after ${waited}s (server $(docker info --format '{{.ServerVersion}}'))"
}

# --- 3. test image ----------------------------------------------------------------
build_image() {
    if docker image inspect "${IMAGE}" >/dev/null 2>&1; then
        log "image: ${IMAGE} present"
        return
    fi
    local busybox=/bin/busybox
    [[ -x "${busybox}" ]] || die "${busybox} missing (package busybox-static)"
    log "image: building ${IMAGE} from ${busybox}"
    IMAGE_TMP="$(mktemp -d)"
    trap 'rm -rf "${IMAGE_TMP}"' EXIT
    local tmp="${IMAGE_TMP}"
    mkdir -p "${tmp}/root/bin" "${tmp}/root/data" "${tmp}/root/tmp"
    chmod 1777 "${tmp}/root/tmp"
    cp "${busybox}" "${tmp}/root/bin/busybox"
    local applet
    for applet in $("${busybox}" --list); do
        # Never link busybox onto itself: that would replace the binary with a
        # self-referencing symlink.
        [[ "${applet}" == "busybox" ]] && continue
        ln -sf busybox "${tmp}/root/bin/${applet}"
    done
    tar -C "${tmp}/root" -c . | docker import --change 'ENV PATH=/bin' - "${IMAGE}" >/dev/null
    # Prove it runs the way the tests use it.
    local out
    out="$(docker run --rm --network none "${IMAGE}" sh -c 'echo ok')" \
        || die "image ${IMAGE} was built but does not run"
    [[ "${out}" == "ok" ]] || die "image ${IMAGE} smoke run printed '${out}', expected 'ok'"
    log "image: ${IMAGE} built"
}

# --- 4. S3 servers (HOOK, not implemented yet) --------------------------------------
# >>> HOOK: S3 servers >>>
# A later issue adds real S3 servers here (DESIGN.md §7), both bound to
# 127.0.0.1 only, idempotent like the rest of this script (reuse a running
# server, log under ${STATE_DIR}, wait until it answers, fail clearly):
#   start_seaweedfs   # `weed mini -ip=127.0.0.1 -ip.bind=127.0.0.1 ...`, S3 on :8333
#   start_garage      # cached `garage` binary, single node, sqlite, rf=1
# Call them from main() below, after start_dockerd.
# <<< HOOK: S3 servers <<<

main() {
    install_packages
    start_dockerd
    build_image
    # >>> HOOK: call S3 server starters here (start_seaweedfs; start_garage) <<<
    log "environment ready"
}

main "$@"
