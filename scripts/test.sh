#!/usr/bin/env bash
# The test command of Keel: `sudo ./scripts/test.sh` (or `./scripts/test.sh` as root).
#
#  1. As root on Debian/Ubuntu, installs the system packages a fresh machine lacks (see scripts/lib.sh);
#     otherwise only reports them, and the tests that need them skip with a message.
#  2. Installs cargo-nextest when it is missing.
#  3. Builds the whole workspace with its tests (the multi-process tests run the `keel` binary).
#  4. Runs every test with nextest (profile `ci` from .config/nextest.toml when $CI is set) and prints
#     the wall time. Extra arguments go to `cargo nextest run`, e.g. `./scripts/test.sh -E 'test(up)'`.
#
# Exits non-zero when anything fails. Works from any directory and without a terminal.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

started=$(date +%s)

# 1. System packages.
if ! keel_ensure_packages "${KEEL_TEST_PACKAGES[@]}"; then
    keel_warn "going on without them: tests that need a missing tool skip with a message"
fi

# 2. Rust and cargo-nextest.
keel_find_cargo || {
    keel_no_cargo
    exit 1
}
trap 'keel_give_back_to_sudo_user target .config ${KEEL_USER_TOOLCHAIN:+"$KEEL_USER_TOOLCHAIN"}' EXIT
if ! cargo nextest --version >/dev/null 2>&1; then
    keel_log "cargo-nextest is missing; installing it: cargo install cargo-nextest --locked (a few minutes)"
    cargo install cargo-nextest --locked
fi

# 2b. schemathesis (PyPI), the OpenAPI fuzzer of node/tests/openapi.rs, in a venv under target/ (the
#     test installs it itself when missing; .keel-installed marks a finished install).
SCHEMATHESIS_VERSION=4.32.5
st_venv=target/schemathesis-venv
if [ "$(cat "$st_venv/.keel-installed" 2>/dev/null)" != "$SCHEMATHESIS_VERSION" ]; then
    keel_log "installing schemathesis $SCHEMATHESIS_VERSION into $st_venv"
    rm -rf "$st_venv"
    mkdir -p target
    if python3 -m venv "$st_venv" && "$st_venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"; then
        echo "$SCHEMATHESIS_VERSION" >"$st_venv/.keel-installed"
    else
        keel_warn "could not install schemathesis: the OpenAPI fuzz test skips (fails when CI is set)"
    fi
fi

# 2c. ioredis (npm), the Node.js Sentinel client of node/tests/sentinel.rs (a client in a second
#     language), into target/ioredis with npm's cache beside it; KEEL_IOREDIS tells the tests where it
#     is. Node.js and npm come from Debian when missing (KEEL_NODE_PACKAGES; checked by command, since
#     a Node.js from elsewhere may bundle its own npm). Without them, or when the install fails
#     (offline), the ioredis tests skip with a message, and CI fails here instead.
IOREDIS_VERSION=5
ior_dir=target/ioredis
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    keel_ensure_packages "${KEEL_NODE_PACKAGES[@]}" || true
fi
if [ "$(cat "$ior_dir/.keel-installed" 2>/dev/null)" != "$IOREDIS_VERSION" ]; then
    keel_log "installing ioredis@$IOREDIS_VERSION into $ior_dir"
    rm -rf "$ior_dir/node_modules" "$ior_dir/.keel-installed"
    mkdir -p "$ior_dir"
    if command -v npm >/dev/null 2>&1 &&
        npm install --prefix "$ior_dir" --cache "$ior_dir/.npm-cache" --no-audit --no-fund --loglevel=error \
            "ioredis@$IOREDIS_VERSION" >/dev/null; then
        echo "$IOREDIS_VERSION" >"$ior_dir/.keel-installed"
    elif [ -n "${CI:-}" ]; then
        keel_die "could not install ioredis (needs node and npm, and npm's registry): the Sentinel test with a second client language cannot run"
    else
        keel_warn "could not install ioredis: the ioredis tests in node/tests/sentinel.rs skip"
    fi
fi
if [ -d "$ior_dir/node_modules/ioredis" ]; then
    export KEEL_IOREDIS="$ROOT/$ior_dir/node_modules/ioredis"
fi

# 3. Build everything, including the test targets and the keel binary they start.
keel_log "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

# 3b. The previous release (commit e70e0e1) for the rolling-upgrade test, built before the tests run
#     so it does not compete with them for CPU, into its own target dir (target/prev). Exit code 3:
#     the commit is not in this clone (shallow clone); the upgrade test then skips with a loud message.
prev_rc=0
./scripts/build-prev.sh || prev_rc=$?
if [ "$prev_rc" -eq 3 ]; then
    keel_warn "no previous release to build: node/tests/upgrade.rs will skip"
elif [ "$prev_rc" -ne 0 ]; then
    keel_die "building the previous release for the upgrade test failed (scripts/build-prev.sh exit $prev_rc)"
fi

# 4. Run the tests.
cmd=(cargo nextest run --workspace --no-fail-fast)
if [ -n "${CI:-}" ]; then
    cmd+=(--profile ci)
fi
cmd+=("$@")
keel_log "${cmd[*]}"
tests_started=$(date +%s)
set +e
"${cmd[@]}"
rc=$?
set -e
finished=$(date +%s)

keel_log "test suite wall time: $((finished - tests_started)) s (whole script: $((finished - started)) s)"
if [ "$rc" -ne 0 ]; then
    printf 'error: tests failed (cargo nextest exit code %s)\n' "$rc" >&2
fi
exit "$rc"
