#!/usr/bin/env bash
# Why this exists: the test command (tests/run.sh) runs every fuzz target of tests/fuzz for a
# bounded time, so the parsers of untrusted bytes (issue 3: the bbolt reader, the
# container-config parser) are fuzzed on every CI run, not only when someone remembers.
#
# cargo-fuzz comes from crates.io (tests/env/setup.sh installs it into ~/.cache/volguard).
# Only the stable toolchain exists here; cargo-fuzz passes a few -Z flags to rustc, which
# RUSTC_BOOTSTRAP=1 lets stable accept. No sanitizer is used (-s none): the code under fuzz
# is safe Rust, so what we look for is panics, overflow (debug assertions are on), hangs and
# runaway allocations, which libFuzzer reports without ASan, and the build stays quick.
#
# Each target starts from the committed seeds (tests/fuzz/seeds/<target>: real files from
# dockerd 20.10, hand-built ones) plus a corpus kept in ~/.cache/volguard/fuzz-corpus, so
# runs add up over time. A crash fails the run and leaves the input in
# ~/.cache/volguard/fuzz-artifacts/<target>/; turn it into a regression unit test.
#
# Usage: bash tests/fuzz/run.sh [SECONDS_PER_TARGET]   (default: VOLGUARD_FUZZ_SECS or 20)
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${HOME}/.cache/volguard"
CARGO_FUZZ="${STATE_DIR}/cargo-fuzz/bin/cargo-fuzz"
SECS="${1:-${VOLGUARD_FUZZ_SECS:-20}}"
TARGETS=(bolt_reader container_config pack index tree snapshot fanotify_records tar_import)
# Largest real seed is a 64 KiB metadata.db; inputs may grow a little past it.
MAX_LEN=131072

log() { printf '[fuzz] %s\n' "$*" >&2; }

[[ -x "${CARGO_FUZZ}" ]] || { log "cargo-fuzz missing at ${CARGO_FUZZ}; run tests/env/setup.sh"; exit 1; }

export RUSTC_BOOTSTRAP=1
target_dir="${VOLGUARD_FUZZ_TARGET_DIR:-${STATE_DIR}/target-fuzz}"
cd "${FUZZ_DIR}"

log "building ${TARGETS[*]} (target dir ${target_dir})"
"${CARGO_FUZZ}" build --fuzz-dir "${FUZZ_DIR}" -s none --target-dir "${target_dir}"

for t in "${TARGETS[@]}"; do
    corpus="${STATE_DIR}/fuzz-corpus/${t}"
    artifacts="${STATE_DIR}/fuzz-artifacts/${t}/"
    mkdir -p "${corpus}" "${artifacts}"
    log "${t}: ${SECS}s from $(ls "${FUZZ_DIR}/seeds/${t}" | wc -l) seeds + $(ls "${corpus}" | wc -l) corpus inputs"
    if ! "${CARGO_FUZZ}" run --fuzz-dir "${FUZZ_DIR}" -s none --target-dir "${target_dir}" \
        "${t}" "${corpus}" "${FUZZ_DIR}/seeds/${t}" -- \
        -max_total_time="${SECS}" -max_len="${MAX_LEN}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="${artifacts}" -print_final_stats=1 2>"${STATE_DIR}/fuzz-${t}.log"; then
        tail -n 60 "${STATE_DIR}/fuzz-${t}.log" >&2
        log "${t}: FAILED; the input is in ${artifacts} (make it a regression unit test)"
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE' "${STATE_DIR}/fuzz-${t}.log" \
        | sed "s/^/[fuzz] ${t}: /" >&2 || true
done
log "all targets ran ${SECS}s each without a crash"
