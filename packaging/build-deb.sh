#!/usr/bin/env bash
# Builds the Debian package: release binary, generated man pages and completions
# (build-common.sh), then `cargo deb --no-build` with the [package.metadata.deb] of
# Cargo.toml. Prints the path of the .deb on stdout. Reuses CARGO_TARGET_DIR, so after a
# `cargo test --release` it costs a strip and the compression.
#   usage: packaging/build-deb.sh [OUTPUT_DIR]   (default: $CARGO_TARGET_DIR/debian)
# shellcheck source=packaging/build-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-common.sh"

out_dir="${1:-${CARGO_TARGET_DIR}/debian}"
command -v cargo-deb >/dev/null 2>&1 \
    || die "cargo-deb not found (in ${CARGO_TOOLS}/bin or PATH); run tests/env/setup.sh"
prepare_assets
mkdir -p "${out_dir}"
log "cargo deb --no-build -o ${out_dir}"
deb="$(cargo deb --no-build --locked --no-strip -o "${out_dir}")"
[[ -f "${deb}" ]] || die "cargo deb reported ${deb:-nothing}, which is no file"
echo "${deb}"
