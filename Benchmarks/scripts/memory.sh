#!/usr/bin/env bash
# Peak memory and wall time of `snap snapshot` and `snap restore` for a storage folder holding one
# small random file and one holding one large random file. Peak RSS should not grow with file size:
# the chunker keeps a buffer of twice the largest chunk and the writer queue holds a few batches.
#
# Usage: Benchmarks/scripts/memory.sh            (from anywhere; builds snap in release first)
# Environment:
#   SIZES_MIB="100 2048"   file sizes to measure, in MiB, one storage folder (one file) each
#   SNAP_BENCH_TMPDIR=/var/tmp  where the repository and folders go: needs about 2 x the sum of
#                          the sizes free (files, their objects, the restored copy); removed at exit.
#                          Not /tmp on the project's VMs: creating a file there costs ~1 ms of
#                          kernel time (ext4 inode search), which would dominate object writes.
#   SNAP_BIN=path          use this snap binary instead of building one
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sizes="${SIZES_MIB:-100 2048}"

# shellcheck source=lib/bench.sh
source "$root/Benchmarks/scripts/lib/bench.sh"

"$root/scripts/bootstrap.sh" time
build_snap .build-release

work="$(mktemp -d "${SNAP_BENCH_TMPDIR:-/var/tmp}/snap-memory.XXXXXX")"
trap 'rm -rf "$work"' EXIT
repo="$work/repo"

# Runs "$@" under GNU time; prints "peak_kib wall_seconds user_seconds system_seconds" and leaves
# the command's stdout in $work/out.
measure() {
    sync
    /usr/bin/time -v -o "$work/time" "$@" >"$work/out"
    awk -F': ' '
        /Maximum resident set size/ { rss = $2 }
        /Elapsed \(wall clock\) time/ {
            n = split($2, p, ":"); wall = 0
            for (i = 1; i <= n; i++) wall = wall * 60 + p[i]
        }
        /User time \(seconds\)/ { user = $2 }
        /System time \(seconds\)/ { sys = $2 }
        END { printf "%d %.2f %.2f %.2f\n", rss, wall, user, sys }' "$work/time"
}

"$snap" --repo "$repo" init >/dev/null

results=()
for mib in $sizes; do
    storage="$work/storage-$mib"
    mkdir -p "$storage"
    echo "writing a ${mib} MiB random file" >&2
    head -c "$((mib << 20))" /dev/urandom >"$storage/random.bin"

    echo "snap snapshot of the ${mib} MiB folder" >&2
    read -r snap_rss snap_wall snap_user snap_sys < <(measure "$snap" --repo "$repo" snapshot --no-db --storage "$storage")
    id="$(cat "$work/out")"

    echo "snap restore of the ${mib} MiB folder" >&2
    read -r restore_rss restore_wall restore_user restore_sys < <(measure "$snap" --repo "$repo" restore "$id" --no-db --storage-to "$work/restored-$mib")
    cmp "$storage/random.bin" "$work/restored-$mib/random.bin"

    results+=("$(printf '| %s MiB | %s MiB | %s s | %s + %s s | %s MiB | %s s | %s + %s s |' \
        "$mib" "$(((snap_rss + 512) / 1024))" "$snap_wall" "$snap_user" "$snap_sys" \
        "$(((restore_rss + 512) / 1024))" "$restore_wall" "$restore_user" "$restore_sys")")
    rm -rf "$storage" "$work/restored-$mib"
done

echo
echo "snap: $snap"
echo "repository after both snapshots: $(du -sh "$repo" | cut -f1)"
echo
echo "| file | snapshot peak RSS | snapshot wall | snapshot CPU user + sys | restore peak RSS | restore wall | restore CPU user + sys |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${results[@]}"
