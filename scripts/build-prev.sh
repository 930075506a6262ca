#!/usr/bin/env bash
# Builds the previous release of Keel (commit KEEL_PREV_COMMIT, default e70e0e1) as
# target/prev/debug/keel-prev, for the rolling-upgrade test (node/tests/upgrade.rs).
#
# The commit's tree is exported with `git archive` into target/keel-prev/<commit>/ (no worktree, no
# change to the repository), its binary is renamed to `keel-prev` in that copy's node/Cargo.toml, and
# it is built into its own target dir, target/prev. It cannot share target/debug: cargo names the
# artifacts of workspace crates by their path relative to the workspace root, so the old copy's
# keel-raft, keel-replication, keel-node... get the same file names and fingerprints as the current
# ones and would silently replace them (tried: the next build of the current tree linked the old
# keel-replication). The separate dir costs one build of the dependencies, kept between runs.
#
# Exit codes: 0 built (or already up to date), 3 the commit is not in this clone (shallow clone or a
# repository without that history: the upgrade test then skips loudly), 1 anything else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

commit=${KEEL_PREV_COMMIT:-e70e0e1}
if ! full=$(git rev-parse --verify --quiet "${commit}^{commit}" 2>/dev/null); then
    keel_warn "commit $commit (the previous Keel release) is not in this clone: cannot build keel-prev"
    keel_warn "the rolling-upgrade test will skip; fetch the full history (git fetch --unshallow) to run it"
    exit 3
fi

keel_find_cargo || {
    keel_no_cargo
    exit 1
}

src="$ROOT/target/keel-prev/$full"
if [ ! -f "$src/.complete" ]; then
    rm -rf "$src"
    mkdir -p "$src"
    git archive --format=tar "$full" | tar -x -C "$src"
    # Rename the binary of the old copy only: its uplifted artifact becomes target/debug/keel-prev.
    sed -i 's/^name = "keel"$/name = "keel-prev"/' "$src/node/Cargo.toml"
    grep -q '^name = "keel-prev"$' "$src/node/Cargo.toml" ||
        keel_die "could not rename the binary in $src/node/Cargo.toml"
    touch "$src/.complete"
fi

keel_log "building the previous release ($full) as target/prev/debug/keel-prev"
CARGO_TARGET_DIR="$ROOT/target/prev" cargo build --locked --manifest-path "$src/Cargo.toml" -p keel-node --bin keel-prev
printf '%s\n' "$full" >"$ROOT/target/prev/debug/keel-prev.commit"
keel_log "built target/prev/debug/keel-prev from $full"
