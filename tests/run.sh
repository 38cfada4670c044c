#!/usr/bin/env bash
# Why this exists: this is THE test command of the README and of CI
# (`bash tests/run.sh [extra cargo test args]`). Integration tests need a real
# dockerd and a test image, so it first prepares the environment
# (tests/env/setup.sh, idempotent), then builds and runs the whole suite:
# lib unit tests, integration tests under tests/, doc tests, then the fuzz
# targets for a bounded time (tests/fuzz/run.sh). Benches are on-demand
# (`cargo bench`) and deliberately not built here.
#
# Extra arguments go to `cargo test`; those before a `--` also go to the build
# phase, e.g. `bash tests/run.sh --test it -- env_smoke:: --nocapture`.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME}/.cache/volguard/target}"

phase() { printf '\n==== [%s] %s ====\n' "$1" "$2" >&2; }

if ! command -v cargo >/dev/null 2>&1 && [[ -f "${HOME}/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "${HOME}/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "tests/run.sh: cargo not found in PATH" >&2; exit 1; }

# Arguments before `--` select what cargo builds (--test it, --features ...).
build_args=()
for arg in "$@"; do
    [[ "${arg}" == "--" ]] && break
    build_args+=("${arg}")
done

start=${SECONDS}

# The module layering of src/ (no upward import, no circle within a layer; see .ci/layers.py):
# a plain source check, so it fails fast before anything is installed or built.
phase "0/3" "module layering (.ci/layers.py)"
python3 "${REPO_ROOT}/.ci/layers.py"

phase "1/3" "environment setup (tests/env/setup.sh)"
bash "${REPO_ROOT}/tests/env/setup.sh"

phase "2/3" "build: cargo test --release --no-run (CARGO_TARGET_DIR=${CARGO_TARGET_DIR})"
cargo test --release --no-run "${build_args[@]}"

phase "3/3" "test: cargo test --release${*:+ $*}"
cargo test --release "$@"

# Fuzz targets (tests/fuzz) for a bounded time each: on a whole-suite run (no arguments), or
# whenever VOLGUARD_FUZZ_SECS is set; VOLGUARD_FUZZ_SECS=0 skips them.
if [[ $# -eq 0 || -n "${VOLGUARD_FUZZ_SECS:-}" ]] && [[ "${VOLGUARD_FUZZ_SECS:-20}" != 0 ]]; then
    phase "fuzz" "tests/fuzz/run.sh (${VOLGUARD_FUZZ_SECS:-20}s per target)"
    bash "${REPO_ROOT}/tests/fuzz/run.sh" "${VOLGUARD_FUZZ_SECS:-20}"
fi

phase "done" "all tests passed in $((SECONDS - start))s"
