# Sourced by build-deb.sh and build-rpm.sh: builds the release binary and generates what
# the packages ship besides it, into "$CARGO_TARGET_DIR/release/packaging/" (the path the
# package metadata in Cargo.toml names as target/release/packaging/):
#   bin/volguard          the binary without debug sections (symbols kept for backtraces)
#   man/*.1.gz            volguard.1 and volguard-COMMAND.1, from the clap definitions,
#                         compressed as Debian policy wants (cargo-deb compresses only
#                         man pages that are not build products)
#   completions/*         bash, zsh and fish completion scripts, from the same
# Generated files are made fresh on every build and never committed, so they cannot go
# stale against the CLI.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}"
# cargo-deb and cargo-generate-rpm live here (tests/env/setup.sh installs them).
readonly CARGO_TOOLS="${VOLGUARD_CARGO_TOOLS:-${HOME}/.cache/volguard/cargo-tools}"
export PATH="${CARGO_TOOLS}/bin:${PATH}"
readonly PKG_DIR="${CARGO_TARGET_DIR}/release/packaging"

log() { printf '[package] %s\n' "$*" >&2; }
die() { printf '[package] ERROR: %s\n' "$*" >&2; exit 1; }

prepare_assets() {
    log "cargo build --release --locked --bin volguard (CARGO_TARGET_DIR=${CARGO_TARGET_DIR})"
    cargo build --release --locked --bin volguard >&2
    local bin="${CARGO_TARGET_DIR}/release/volguard"
    [[ -x "${bin}" ]] || die "cargo build left no ${bin}"
    rm -rf "${PKG_DIR}"
    mkdir -p "${PKG_DIR}/bin"
    strip --strip-debug -o "${PKG_DIR}/bin/volguard" "${bin}"
    "${bin}" generate man --out "${PKG_DIR}/man" >/dev/null
    # -n: no name or time stamp in the header, so equal pages give equal packages.
    gzip -n -9 "${PKG_DIR}/man/"*.1
    local shell
    for shell in bash zsh fish; do
        "${bin}" generate completions "${shell}" --out "${PKG_DIR}/completions" >/dev/null
    done
    log "assets in ${PKG_DIR}: $(cd "${PKG_DIR}" && find . -type f | sort | tr '\n' ' ')"
}
