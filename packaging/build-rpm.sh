#!/usr/bin/env bash
# Builds the RPM package: release binary, generated man pages and completions
# (build-common.sh), then `cargo generate-rpm` with the [package.metadata.generate-rpm] of
# Cargo.toml. Prints the path of the .rpm on stdout.
#   usage: packaging/build-rpm.sh [OUTPUT_DIR]   (default: $CARGO_TARGET_DIR/generate-rpm)
# shellcheck source=packaging/build-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-common.sh"

out_dir="${1:-${CARGO_TARGET_DIR}/generate-rpm}"
command -v cargo-generate-rpm >/dev/null 2>&1 \
    || die "cargo-generate-rpm not found (in ${CARGO_TOOLS}/bin or PATH); cargo install --locked cargo-generate-rpm --root ${CARGO_TOOLS}"
prepare_assets
mkdir -p "${out_dir}"
log "cargo generate-rpm -o ${out_dir}"
cargo generate-rpm -o "${out_dir}" >&2
rpm="$(find "${out_dir}" -maxdepth 1 -name 'volguard-*.rpm' -newer "${PKG_DIR}/bin/volguard" | head -n 1)"
[[ -f "${rpm}" ]] || die "cargo generate-rpm left no volguard-*.rpm in ${out_dir}"
echo "${rpm}"
