#!/usr/bin/env bash
# What making a snapshot durable costs, and what it costs everyone else on the filesystem.
#
#   1. first snapshot: a pgbench database (dump streamed) plus a storage folder of compare.sh's
#      kind, into an empty repository; seconds, and the objects written
#   2. one-file snapshot while another program has DIRTY_MB of unwritten data on the same
#      filesystem (a database's writes waiting for writeback, say): seconds, and how much of the
#      other program's data the snapshot forced to disk (Dirty in /proc/meminfo before and after)
#   3. the same one-file snapshot without the other program's data, for reference
#
# Each binary runs ROUNDS times, interleaved with the others, on one fresh ext4 filesystem (with
# its journal, as on a server: see lib/bench.sh). Prints one line per run and a median per binary.
#
# Usage: Benchmarks/scripts/durability.sh        (as root: it mounts a filesystem)
# Environment:
#   SNAP_BINS="before=/path/to/snap after=/path/to/snap"   the binaries to compare (default: a
#                   release build of this tree, as "snap")
#   SCALE=30        storage folder size (compare.sh's units: ~10 MB and ~100 files each)
#   PGBENCH_SCALE=20   database size (20: a 0.3 GB database, a 0.2 GB dump)
#   DIRTY_MB=2200   the other program's unwritten data
#   ROUNDS=3
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCALE="${SCALE:-30}"
PGBENCH_SCALE="${PGBENCH_SCALE:-20}"
DIRTY_MB="${DIRTY_MB:-2200}"
ROUNDS="${ROUNDS:-3}"
# shellcheck source=../../scripts/lib/throwaway-postgres.sh
source "$root/scripts/lib/throwaway-postgres.sh"
# shellcheck source=lib/bench.sh
source "$root/Benchmarks/scripts/lib/bench.sh"

"$root/scripts/bootstrap.sh" time
default_snap_bins
make_work_folder snap-durability 32G
pg_start "$work/pg"
export SNAP_CACHE_DIR="$work/cache"

echo "building the data set" >&2
createdb bench
pgbench -i -s "$PGBENCH_SCALE" -q bench 2>&1 | tail -n 1 >&2
python3 "$root/Benchmarks/scripts/compare/storage.py" create "$work/storage" "$SCALE"
mkdir -p "$work/one"
head -c 100000 /dev/urandom >"$work/one/file.bin"
echo "data set: storage $(du -sh "$work/storage" | cut -f1), database $(psql -XAtc "SELECT pg_size_pretty(pg_database_size('bench'))" bench)" >&2

dirty_kb() { awk '/^Dirty:/ { print $2 }' /proc/meminfo; }


declare -A first_runs one_runs busy_runs
for ((round = 1; round <= ROUNDS; round++)); do
    for entry in $SNAP_BINS; do
        name=${entry%%=*} bin=${entry#*=}
        repo="$work/repo-$name"

        fresh_repository "$bin" "$repo"
        first=$(time_run "$bin" --repo "$repo" snapshot --db dbname=bench --storage "$work/storage" --quiet | cut -d" " -f1)
        objects=$(find "$repo/objects" -type f | wc -l)
        first_runs[$name]+="$first "

        # The one-file folder changes before each snapshot, so each stores one new object.
        head -c 100000 /dev/urandom >"$work/one/file.bin"
        sync
        one=$(time_run "$bin" --repo "$repo" snapshot --no-db --storage "$work/one" --quiet | cut -d" " -f1)
        one_runs[$name]+="$one "

        head -c 100000 /dev/urandom >"$work/one/file.bin"
        sync
        dd if=/dev/zero of="$work/other" bs=1M count="$DIRTY_MB" status=none
        before=$(dirty_kb)
        busy=$(time_run "$bin" --repo "$repo" snapshot --no-db --storage "$work/one" --quiet | cut -d" " -f1)
        after=$(dirty_kb)
        busy_runs[$name]+="$busy "
        rm -f "$work/other"
        sync

        printf '%-8s round %d: first snapshot %6.2f s (%d objects); one file %5.2f s; one file beside %d MB of dirty data %5.2f s, dirty %d -> %d MB\n' \
            "$name" "$round" "$first" "$objects" "$one" "$DIRTY_MB" "$busy" $((before / 1024)) $((after / 1024))
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
printf '%-8s %14s %10s %24s\n' binary "first snapshot" "one file" "one file, ${DIRTY_MB} MB dirty"
for entry in $SNAP_BINS; do
    name=${entry%%=*}
    printf '%-8s %12s s %8s s %22s s\n' "$name" "$(median <<<"${first_runs[$name]}")" \
        "$(median <<<"${one_runs[$name]}")" "$(median <<<"${busy_runs[$name]}")"
done
