# shellcheck shell=bash
# Shared helpers for scripts/test.sh and .ci/run. Source it (it only defines functions and lists);
# the one place that knows which system packages Keel needs and how to install them.

# The lists and KEEL_USER_TOOLCHAIN are read by the scripts that source this file.
# shellcheck disable=SC2034

# Debian/Ubuntu packages needed to build the workspace: pkg-config and libssl-dev (git2/libgit2 with
# https, for Git Sync), a C compiler and libc headers (crates with C parts: libgit2-sys, ring),
# ca-certificates and curl (fetching crates), git.
KEEL_BUILD_PACKAGES=(pkg-config libssl-dev gcc libc6-dev git ca-certificates curl)
# ...and to run every test: HAProxy (load-balancer probe tests), iproute2 and iptables (network
# namespaces and partitions in the chaos tests), procps (ps, pgrep, pkill in tests), OpenSSH (sshd and
# ssh-keygen: Git Sync over ssh:// against a real server on loopback), prometheus (`promtool check
# metrics` on /metrics), python3-venv and python3-pip (schemathesis, the OpenAPI fuzzer, in a venv
# under target/), chromium (the /ui status page rendered headless; the largest: about 118 MiB to
# download, 395 MiB installed with its libraries, 26 s to install here), faketime (libfaketime: the
# chaos harness's clock skew and drift nemesis), redis-server (the managed-Redis tests run a real one per
# node; it brings redis-tools' redis-cli) and python3-redis (redis-py, a real Sentinel-aware client).
KEEL_TEST_PACKAGES=("${KEEL_BUILD_PACKAGES[@]}" haproxy iproute2 iptables procps openssh-server openssh-client
    prometheus python3-venv python3-pip chromium faketime redis-server python3-redis)

# ...and for the Sentinel test with ioredis (scripts/test.sh installs ioredis itself with npm). Only
# installed when `node` or `npm` is missing, so a Node.js from elsewhere is left alone.
KEEL_NODE_PACKAGES=(nodejs npm)

keel_log() { printf '==> %s\n' "$*"; }
keel_warn() { printf 'warning: %s\n' "$*" >&2; }
keel_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# keel_pkg_present PKG: is the Debian package installed? Without dpkg, a best-effort look for what the
# package provides.
keel_pkg_present() {
    local p=$1
    if command -v dpkg >/dev/null 2>&1; then
        dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'
        return
    fi
    case $p in
        libssl-dev) pkg-config --exists openssl ;;
        iproute2) command -v ip ;;
        procps) command -v ps && command -v pgrep ;;
        gcc) command -v cc ;;
        libc6-dev) [ -e /usr/include/stdio.h ] ;;
        ca-certificates) [ -d /etc/ssl/certs ] ;;
        prometheus) command -v promtool ;;
        python3-venv) python3 -m venv --help ;;
        python3-pip) python3 -m pip --version ;;
        *) command -v "$p" ;;
    esac >/dev/null 2>&1
}

# keel_apt_install PKG...: apt-get update + install, non-interactive, one retry after a failure. apt's
# chatter goes to a temporary log that is shown only when the install fails.
keel_apt_install() {
    local attempt log apt=(apt-get -o DPkg::Lock::Timeout=120 -q)
    log=$(mktemp)
    for attempt in 1 2; do
        if { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
            DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "$@"; } \
            </dev/null >"$log" 2>&1; then
            rm -f "$log"
            return 0
        fi
        if [ "$attempt" = 1 ]; then
            keel_warn "apt-get failed; retrying once in 5 s"
            sleep 5
        fi
    done
    keel_warn "apt-get failed twice; its last lines:"
    tail -n 25 "$log" >&2
    rm -f "$log"
    return 1
}

# keel_ensure_packages PKG...: installs the missing ones when running as root on a machine with
# apt-get; otherwise says what is missing. Returns 0 when everything is present afterwards, 1 if not.
keel_ensure_packages() {
    local p missing=()
    for p in "$@"; do
        keel_pkg_present "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        keel_log "installing missing packages: ${missing[*]}"
        if keel_apt_install "${missing[@]}"; then
            keel_log "installed: ${missing[*]}"
            return 0
        fi
        keel_warn "could not install: ${missing[*]}"
        return 1
    fi
    keel_warn "missing packages: ${missing[*]}"
    keel_warn "install them with: sudo apt-get install ${missing[*]}  (or run this script as root)"
    return 1
}

# keel_find_cargo: puts cargo on PATH. Under `sudo`, PATH and HOME are root's, so also look in the
# invoking user's ~/.cargo/bin and use that user's rustup toolchain. Returns 1 when there is no cargo.
KEEL_USER_TOOLCHAIN=""
keel_find_cargo() {
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    local home
    for home in "${CARGO_HOME:-$HOME/.cargo}" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo"}; do
        if [ -x "$home/bin/cargo" ]; then
            export PATH="$home/bin:$PATH"
            if [ -n "${SUDO_USER:-}" ] && [ "$home" != "${CARGO_HOME:-$HOME/.cargo}" ]; then
                export CARGO_HOME="$home"
                export RUSTUP_HOME="${RUSTUP_HOME:-$(dirname "$home")/.rustup}"
                KEEL_USER_TOOLCHAIN=$home
            fi
            return 0
        fi
    done
    return 1
}

keel_no_cargo() {
    printf '%s\n' \
        "error: cargo not found. Install Rust (stable, 1.85 or newer) with rustup:" \
        "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" \
        "  . \"\$HOME/.cargo/env\"" \
        "then run this script again." >&2
}

# keel_give_back_to_sudo_user PATH...: after `sudo ./scripts/test.sh`, files that root created under
# the given paths (target/, the user's ~/.cargo) are handed back to the user who ran sudo, so a later
# plain `cargo build` is not refused. Only when the repository itself belongs to that user.
keel_give_back_to_sudo_user() {
    [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_UID:-}" ] && [ -n "${SUDO_GID:-}" ] || return 0
    [ "$(stat -c %u .)" = "$SUDO_UID" ] || return 0
    local p
    for p in "$@"; do
        [ -e "$p" ] && find "$p" -xdev -user 0 -exec chown -h "$SUDO_UID:$SUDO_GID" {} + 2>/dev/null
    done
    return 0
}
