#!/usr/bin/env bash
# Same-run comparison of openraft (this crate) and ha-raft (its `propose`
# criterion bench), alternating per point: for every (members, clients)
# point, REPEAT times: openraft, then ha-raft. Prints the load average
# before each run and one summary line per run; the raw criterion output
# goes to $OUT_DIR.
#
#   bench/openraft-compare/compare.sh            # the full 3 x 5 matrix
#   MEMBERS=3 CLIENTS="1 256" REPEAT=3 bench/openraft-compare/compare.sh
#
# Build both first (the script does, with `nice`); runs themselves are not
# niced so they get the CPU first on a shared machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
MEMBERS="${MEMBERS:-1 3 5}"
CLIENTS="${CLIENTS:-1 64 256 1000 4000}"
REPEAT="${REPEAT:-2}"
OPS="${OPS:-20000}"
OUT_DIR="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$OUT_DIR"

(cd "$here" && nice -n 10 cargo build --release --quiet)
target="${CARGO_TARGET_DIR:-$here/target}"
oraft="$target/release/openraft-compare"

ha_bin="$(cd "$root" && nice -n 10 cargo bench -p ha-raft --bench propose --no-run 2>&1 \
  | sed -n 's/.*Executable benches\/propose.rs (\(.*\)).*/\1/p' | tail -n 1)"
if [[ -z "$ha_bin" || ! -x "$ha_bin" ]]; then
  echo "could not find ha-raft's propose bench executable" >&2
  exit 1
fi

# Middle of criterion's throughput interval, in ops/s.
criterion_ops() {
  awk '/thrpt:/ {
    gsub(/[\[\]]/, "");
    for (i = 1; i <= NF; i++) if ($i ~ /elem\/s$/) { n++; if (n == 2) { v = $(i-1); u = $i } }
  }
  END {
    m = 1;
    if (u ~ /^K/) m = 1e3; else if (u ~ /^M/) m = 1e6; else if (u ~ /^G/) m = 1e9;
    if (v == "") exit 1;
    printf "%.0f\n", v * m;
  }' "$1"
}

echo "# $(date -u +%FT%TZ) commit $(git -C "$root" rev-parse --short HEAD) ops/point=$OPS raw=$OUT_DIR"
for m in $MEMBERS; do
  for c in $CLIENTS; do
    for r in $(seq 1 "$REPEAT"); do
      load="$(cut -d' ' -f1-3 /proc/loadavg)"
      o="$("$oraft" --members "$m" --clients "$c" --ops "$OPS")"
      o_ops="$(sed -n 's/.* ops\/s=\([0-9]*\).*/\1/p' <<<"$o")"
      echo "openraft m=$m c=$c run=$r load=[$load] ops/s=$o_ops :: $o"
      load="$(cut -d' ' -f1-3 /proc/loadavg)"
      raw="$OUT_DIR/ha-raft-m$m-c$c-r$r.txt"
      (cd "$root/crates/ha-raft" && "$ha_bin" --bench --exact "propose/members_$m/clients_$c") >"$raw" 2>&1
      h_ops="$(criterion_ops "$raw")"
      ratio="$(awk -v h="$h_ops" -v o="$o_ops" 'BEGIN { if (o > 0) printf "%.2f", h / o; else print "n/a" }')"
      echo "ha-raft  m=$m c=$c run=$r load=[$load] ops/s=$h_ops ratio_vs_prev_openraft=$ratio"
    done
  done
done
