#!/usr/bin/env bash
# What the size of a repository costs: peak memory and wall time of a snapshot (a new folder of
# FILES files, then the same folder again, unchanged) against repositories of SIZES objects, and
# of check and prune. The objects are written directly by make-objects.py (valid, unreferenced).
#
# Usage: Benchmarks/scripts/repository-size.sh   (as root it works on a fresh ext4, lib/bench.sh)
# Environment:
#   SNAP_BINS="before=/path/to/snap after=/path/to/snap"   binaries to compare (default: a release
#                   build of this tree, as "snap"), run interleaved
#   SIZES="10000 1000000"   repository sizes, in objects
#   FILES=1000      files in the folder snapshotted (10 KB each, random)
#   ROUNDS=3
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SIZES="${SIZES:-10000 1000000}"
FILES="${FILES:-1000}"
ROUNDS="${ROUNDS:-3}"
# shellcheck source=lib/bench.sh
source "$root/Benchmarks/scripts/lib/bench.sh"

"$root/scripts/bootstrap.sh" time
default_snap_bins
make_work_folder snap-repository-size 24G
export SNAP_CACHE_DIR="$work/cache"
first_bin=${SNAP_BINS%% *}
first_bin=${first_bin#*=}


new_folder() {
    rm -rf "$work/storage"
    mkdir -p "$work/storage"
    python3 - "$work/storage" "$FILES" <<'PY'
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    d = os.path.join(root, "d%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d.bin" % i), "wb") as f:
        f.write(os.urandom(10000))
PY
    # The files cache does not trust files changed in the last two seconds.
    find "$work/storage" -type f -exec touch -d '-1 minute' {} +
}

for size in $SIZES; do
    repo="$work/repo-$size"
    "$first_bin" --repo "$repo" init >/dev/null
    echo "writing $size objects" >&2
    python3 "$root/Benchmarks/scripts/make-objects.py" "$repo" "$size"
    sync
    for ((round = 1; round <= ROUNDS; round++)); do
        for entry in $SNAP_BINS; do
            name=${entry%%=*} bin=${entry#*=}
            new_folder
            rm -rf "$SNAP_CACHE_DIR"
            sync
            read -r first_s first_m < <(time_run "$bin" --repo "$repo" snapshot --no-db --storage "$work/storage" --quiet)
            read -r second_s second_m < <(time_run "$bin" --repo "$repo" snapshot --no-db --storage "$work/storage" --quiet)
            read -r check_s check_m < <(time_run "$bin" --repo "$repo" check)
            read -r prune_s prune_m < <(time_run "$bin" --repo "$repo" prune --dry-run)
            printf '%8d objects  %-8s round %d: snapshot %5.2f s %4d MiB; again %5.2f s %4d MiB; check %5.2f s %4d MiB; prune --dry-run %5.2f s %4d MiB\n' \
                "$size" "$name" "$round" "$first_s" "$first_m" "$second_s" "$second_m" "$check_s" "$check_m" "$prune_s" "$prune_m"
        done
    done
    rm -rf "$repo"
done
