#!/usr/bin/env bash
# Many small files: a first snapshot of FILES files of a few bytes in 100 folders (one object
# each: what the per-object write and durability cost), then a second of the unchanged folder
# (the files cache: what the per-file lookups cost). Wall time and peak memory per binary,
# interleaved, on a fresh ext4 (lib/bench.sh).
#
# Usage: Benchmarks/scripts/small-files.sh
# Environment:
#   SNAP_BINS="before=/path/to/snap after=/path/to/snap"   (default: a release build of this tree)
#   FILES=100000
#   ROUNDS=3
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FILES="${FILES:-100000}"
ROUNDS="${ROUNDS:-3}"
# shellcheck source=lib/bench.sh
source "$root/Benchmarks/scripts/lib/bench.sh"

"$root/scripts/bootstrap.sh" time
default_snap_bins
make_work_folder snap-small-files 16G
export SNAP_CACHE_DIR="$work/cache"

python3 - "$work/storage" "$FILES" <<'PY'
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    d = os.path.join(root, "d%03d" % (i % 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d.txt" % i), "w") as f:
        f.write("file %d\n" % i)
PY
# The files cache does not trust files changed in the last two seconds.
find "$work/storage" -type f -exec touch -d '-1 minute' {} +

for ((round = 1; round <= ROUNDS; round++)); do
    for entry in $SNAP_BINS; do
        name=${entry%%=*} bin=${entry#*=}
        repo="$work/repo-$name"
        fresh_repository "$bin" "$repo"
        read -r first_s first_m < <(time_run "$bin" --repo "$repo" snapshot --no-db --storage "$work/storage" --quiet)
        sync
        read -r second_s second_m < <(time_run "$bin" --repo "$repo" snapshot --no-db --storage "$work/storage" --quiet)
        printf '%-8s round %d: first snapshot %6.2f s %4d MiB; second (unchanged) %5.2f s %4d MiB\n' \
            "$name" "$round" "$first_s" "$first_m" "$second_s" "$second_m"
    done
done
