#!/bin/sh
# Instructions per packet of wg-core's hot path beside raw boringtun, counted by callgrind
# (stable where wall-clock benches on a shared VM are not). Needs valgrind
# (`apt-get install valgrind`). Usage, from anywhere in the workspace:
#
#   crates/wg-core/callgrind.sh [N] [SIZES...]      # default: N=20000, sizes 64 512 1420
#
# For each direction and size it runs examples/hotpath.rs under callgrind, collecting only
# inside its `measure` function (the loop of N packets), and prints instructions per packet
# for `Peers` (route + encapsulate + poll_transmit, or handle_datagram + decapsulate + allowed-IP
# check + poll_received) and raw `Tunn`, with the ratio.
set -eu
cd "$(dirname "$0")/../.."
n=${1:-20000}
[ $# -gt 0 ] && shift
sizes=${*:-64 512 1420}
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 1; }
cargo build --quiet --release -p wg-core --example hotpath
bin=${CARGO_TARGET_DIR:-target}/release/examples/hotpath
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

count() {
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measure*' \
        --callgrind-out-file="$out/cg" "$bin" "$1" "$n" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '%-12s %6s %12s %12s %7s\n' direction size peers raw ratio
for dir in encap decap; do
    for size in $sizes; do
        ours=$(count "peers-$dir" "$size")
        raw=$(count "raw-$dir" "$size")
        awk -v d="$dir" -v s="$size" -v o="$ours" -v r="$raw" -v n="$n" 'BEGIN {
            printf "%-12s %6d %12.1f %12.1f %7.3f\n", d, s, o / n, r / n, o / r }'
    done
done
