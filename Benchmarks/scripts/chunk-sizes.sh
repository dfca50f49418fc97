#!/usr/bin/env bash
# The database stream's chunk sizes against what they cost: for each MIN,AVG,MAX, a repository
# made with `snap init --chunker database=MIN,AVG,MAX` takes a first snapshot of the benchmark's
# app database (compare.sh's data set), then, after one round of the same activity for all, a
# second one. Prints a Markdown table: seconds, objects and bytes per snapshot.
#
# Usage: Benchmarks/scripts/chunk-sizes.sh     (as root or with sudo for apt-get)
# Environment:
#   SCALE=30 TX=1500   the data set and the activity, as in compare.sh
#   CONFIGS="..."      space-separated MIN,AVG,MAX triples (default: 4K to 1M averages)
#   COMPARE_TMPDIR=/var/tmp, COMPARE_FRESH_FS=1 (as root), SNAP_BIN=path: as in compare.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/Benchmarks/scripts/compare"
SCALE="${SCALE:-30}"
TX="${TX:-1500}"
CONFIGS="${CONFIGS:-1K,4K,16K 4K,16K,64K 8K,32K,128K 16K,64K,256K 64K,256K,1M 256K,1M,4M}"
# shellcheck source=../../scripts/lib/throwaway-postgres.sh
source "$root/scripts/lib/throwaway-postgres.sh"
# shellcheck source=compare/dataset.sh
source "$here/dataset.sh"
# shellcheck source=lib/bench.sh
source "$root/Benchmarks/scripts/lib/bench.sh"

"$root/scripts/bootstrap.sh" postgresql-contrib

build_snap .build-compare
make_work_folder snap-chunks 16G
export SNAP_CACHE_DIR="$work/cache"
storage="$work/storage"
pg_start "$work/pg"
make_dataset

# snapshot_of N REPO: one database-only snapshot; prints "seconds new_objects new_bytes stored_bytes"
snapshot_of() {
    local start end json
    sync
    start=$(date +%s.%N)
    json=$("$snap" --repo "$2" snapshot --db dbname=app --quiet --json)
    end=$(date +%s.%N)
    python3 -c 'import json, sys
t = json.loads(sys.argv[1])["totals"]
print("%.2f %d %d %d" % (float(sys.argv[2]), t["new_objects"], t["new_bytes"], t["stored_bytes"]))' "$json" "$(echo "$end - $start" | bc)"
}

declare -A first second
index=0
for config in $CONFIGS; do
    index=$((index + 1))
    "$snap" --repo "$work/repo-$index" init --chunker "database=$config" >/dev/null
    first[$config]=$(snapshot_of 1 "$work/repo-$index")
    echo "  $config first: ${first[$config]}" >&2
done
echo "activity" >&2
activity 2
index=0
for config in $CONFIGS; do
    index=$((index + 1))
    second[$config]=$(snapshot_of 2 "$work/repo-$index")
    echo "  $config second: ${second[$config]}" >&2
done

dump_bytes=$(pg_dump -Fc -Z0 -d app | wc -c)
echo
echo "data set: $dataset; dump (pg_dump -Fc -Z0) $((dump_bytes / 1000000)) MB"
echo
echo "| database chunks min / avg / max | first snapshot: s | objects | stored MB | after activity: s | new objects | new MB (uncompressed) | added MB (stored) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for config in $CONFIGS; do
    read -r s1 o1 _ st1 <<<"${first[$config]}"
    read -r s2 o2 b2 st2 <<<"${second[$config]}"
    printf '| %s | %s | %s | %.1f | %s | %s | %.1f | %.1f |\n' "${config//,/ \/ }" "$s1" "$o1" \
        "$(echo "$st1 / 1000000" | bc -l)" "$s2" "$o2" "$(echo "$b2 / 1000000" | bc -l)" "$(echo "$st2 / 1000000" | bc -l)"
done
