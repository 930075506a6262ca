#!/usr/bin/env bash
# A/B of two keel binaries under the same kv_bench cells, alternating, so that a change's cost per
# write is measured against the build before it in one run on one machine.
#
#   scripts/kv-ab.sh BEFORE_KEEL AFTER_KEEL [ROUNDS] [CELL ...]
#
# BEFORE_KEEL and AFTER_KEEL are `keel` binaries (e.g. a release build of the previous commit copied
# aside, and target/release/keel). Cells are kv_bench `--only` values (default: async and sync
# 128 B with 1 and 64 clients, async 16 KiB with 64). Needs target/release/examples/kv_bench
# (`cargo build --release --bins --examples`). Prints each cell's line per round, then the median
# writes/s and servers' CPU per write per cell and build, and the change in percent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,10p "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
before=$1 after=$2 rounds=${3:-3}
shift $(( $# >= 3 ? 3 : 2 ))
cells=("$@")
[ ${#cells[@]} -gt 0 ] || cells=(async:128:1 sync:128:1 async:128:64 sync:128:64 async:16384:64)
bench=target/release/examples/kv_bench
for f in "$before" "$after" "$bench"; do
  [ -x "$f" ] || { echo "kv-ab: $f is not an executable (build it first)" >&2; exit 2; }
done
only=()
for c in "${cells[@]}"; do only+=(--only "$c"); done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for round in $(seq 1 "$rounds"); do
  for which in before after; do
    bin=$before; [ $which = after ] && bin=$after
    echo "== round $round, $which ($bin)"
    KEEL_BIN=$bin "$bench" --secs 5 "${only[@]}" 2>&1 | grep "writes/s" | tee >(sed "s/^/$which /" >>"$out")
  done
done
echo
echo "median writes/s over $rounds rounds:"
python3 - "$out" <<'PY'
import re, statistics, sys
rows = {}
cpu = {}
for line in open(sys.argv[1]):
    m = re.match(r"(before|after) keel (\S+) (.+?): (\d+) writes/s", line)
    if m:
        rows.setdefault(m.group(2) + " " + m.group(3), {}).setdefault(m.group(1), []).append(int(m.group(4)))
        c = re.search(r"servers' CPU (\d+)", line)
        if c:
            cpu.setdefault(m.group(2) + " " + m.group(3), {}).setdefault(m.group(1), []).append(int(c.group(1)))
for cell, v in rows.items():
    b, a = statistics.median(v.get("before", [0])), statistics.median(v.get("after", [0]))
    change = f"{(a - b) / b * 100:+.1f} %" if b else "?"
    print(f"  {cell:<22} before {b:>8.0f}  after {a:>8.0f}  {change}")
print("median servers' CPU us/write:")
for cell, v in cpu.items():
    b, a = statistics.median(v.get("before", [0])), statistics.median(v.get("after", [0]))
    change = f"{(a - b) / b * 100:+.1f} %" if b else "?"
    print(f"  {cell:<22} before {b:>8.0f}  after {a:>8.0f}  {change}")
PY
