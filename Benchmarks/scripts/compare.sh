#!/usr/bin/env bash
# snap side by side with restic, borg and the plain approach (pg_dump -Fc + tar -czf), on one data set:
# a pgbench database plus an app-like schema (users, posts, uploads) and a storage folder.
# For each tool: first snapshot, a second snapshot after a batch of activity, a restore of the
# latest into a new database and folder (checked against the source), then more rounds of
# activity + snapshot; snapshot 1 is the first, snapshot 2 the second, ROUNDS snapshots in all.
# Prints a table, writes compare-results.csv (work folder, copied to the current folder) and
# docs/compare-repository-size.svg.
#
# Usage: Benchmarks/scripts/compare.sh            (from anywhere; as root or with sudo for apt-get)
# Environment:
#   SCALE=30        pgbench scale (30: ~0.45 GB of pgbench tables); also sizes the app tables
#                   (5,000 users, 10,000 posts, 3,000 uploads per unit) and the storage folder
#                   (~10 MB, ~100 files per unit)
#   ROUNDS=10       snapshots per tool (the first, then ROUNDS-1 rounds of activity + snapshot)
#   TX=1500         pgbench transactions per client per round (2 clients)
#   COMPARE_TMPDIR=/var/tmp   where the work folder goes (not /tmp on the project's VMs: file
#                   creation there is very slow); removed at exit
#   COMPARE_FRESH_FS=1   (default as root) the work folder is a fresh ext4 filesystem of its own
#                   (a sparse 24 GB image; see lib/bench.sh); 0 to use the folder as is
#   SNAP_BIN=path   use this snap binary instead of building one
#   TOOLS="plain restic borg snap"   the tools to run, in this order
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/Benchmarks/scripts/compare"
orig_pwd="$PWD"
SCALE="${SCALE:-30}"
ROUNDS="${ROUNDS:-10}"
TX="${TX:-1500}"
# shellcheck source=../../scripts/lib/throwaway-postgres.sh
source "$root/scripts/lib/throwaway-postgres.sh"
# shellcheck source=lib/bench.sh
source "$root/Benchmarks/scripts/lib/bench.sh"

"$root/scripts/bootstrap.sh" restic borgbackup time postgresql-contrib

build_snap .build-compare
make_work_folder snap-compare 24G

echo "work folder $work$([[ $fresh_fs == 1 ]] && echo " (a fresh ext4 filesystem)"); restic $(restic version | awk '{print $2}'), $(borg --version)," \
    "snap $("$snap" --version 2>/dev/null || echo '?'), $(pg_dump --version)" >&2
pg_start "$work/pg"

storage="$work/storage"
export RESTIC_PASSWORD=compare RESTIC_CACHE_DIR="$work/cache/restic" BORG_BASE_DIR="$work/cache/borg"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export SNAP_CACHE_DIR="$work/cache/snap" XDG_CONFIG_HOME="$work/cache/config"
export work storage snap
repo_plain="$work/repo-plain" repo_restic="$work/repo-restic" repo_borg="$work/repo-borg" repo_snap="$work/repo-snap"
export repo_plain repo_restic repo_borg repo_snap

# ---------------------------------------------------------------- data set and activity
# shellcheck source=compare/dataset.sh
source "$here/dataset.sh"
make_dataset

# ---------------------------------------------------------------- the four tools
# Snapshots: each reads database "app" and folder $storage. Restores: into database restore_TOOL
# and folder $work/restore-TOOL (restic and borg keep the stored path below it).
snapshot_plain() {
    set -eo pipefail
    mkdir -p "$repo_plain" "$work/stage"
    local name; name="backup_$(date -u +%Y%m%d_%H%M%S).tar.gz"
    while [[ -e "$repo_plain/$name" ]]; do sleep 1; name="backup_$(date -u +%Y%m%d_%H%M%S).tar.gz"; done
    pg_dump -Fc -d app -f "$work/stage/database.dump"
    tar -czf "$repo_plain/$name" -C "$work/stage" database.dump -C "$work" storage
    rm -f "$work/stage/database.dump"
}
restore_plain() {
    set -eo pipefail
    mkdir -p "$work/restore-plain"
    tar -xzf "$(ls "$repo_plain"/backup_*.tar.gz | sort | tail -n 1)" -C "$work/restore-plain"
    pg_restore -d restore_plain "$work/restore-plain/database.dump"
}
snapshot_restic() {
    set -eo pipefail
    pg_dump -Fc -Z0 -d app | restic -r "$repo_restic" --compression auto backup --quiet --tag db \
        --stdin --stdin-filename database.dump
    restic -r "$repo_restic" --compression auto backup --quiet --tag files "$storage"
}
restore_restic() {
    set -eo pipefail
    restic -r "$repo_restic" dump --tag db latest database.dump | pg_restore -d restore_restic
    restic -r "$repo_restic" restore latest --tag files --target "$work/restore-restic" --include "$storage" >/dev/null
}
snapshot_borg() {
    set -eo pipefail
    local n; n=$(borg list --short "$repo_borg" | wc -l)
    cd "$work"
    pg_dump -Fc -Z0 -d app | borg create --compression zstd,3 --stdin-name database.dump \
        "$repo_borg::s$((n + 1))" - storage
}
restore_borg() {
    set -eo pipefail
    local last; last=$(borg list --short --last 1 "$repo_borg")
    borg extract --stdout "$repo_borg::$last" database.dump | pg_restore -d restore_borg
    mkdir -p "$work/restore-borg" && cd "$work/restore-borg"
    borg extract "$repo_borg::$last" storage
}
snapshot_snap() {
    "$snap" --repo "$repo_snap" snapshot --db dbname=app --storage "$storage" --quiet >/dev/null
}
restore_snap() {
    "$snap" --repo "$repo_snap" restore latest --db dbname=restore_snap --storage-to "$work/restore-snap" >/dev/null
}
export -f snapshot_plain restore_plain snapshot_restic restore_restic snapshot_borg restore_borg snapshot_snap restore_snap

mkdir -p "$repo_plain" "$SNAP_CACHE_DIR"
restic -r "$repo_restic" init --repository-version 2 >/dev/null
borg init --encryption none "$repo_borg" >/dev/null
"$snap" --repo "$repo_snap" init >/dev/null
read -r -a tools <<<"${TOOLS:-plain restic borg snap}"
repo_of() { local v="repo_$1"; echo "${!v}"; }

csv="$work/compare-results.csv"
echo "tool,phase,snapshot,seconds,bytes_added,peak_kib,repo_bytes" >"$csv"

# measure TOOL PHASE N FUNCTION: runs FUNCTION under GNU time (peak RSS is the largest of the
# process tree: pg_dump, the tool, gzip...), appends a CSV row.
measure() {
    local tool=$1 phase=$2 n=$3 fn=$4 repo before after secs kib
    repo=$(repo_of "$tool")
    # Every tool starts from a checkpointed server and synced disks: the writes of the data set,
    # of the activity and of the tool before are not charged to whichever tool runs next. Twice:
    # the first sync turns the work filesystem's writes into dirty pages of its image file.
    psql -XAtqc CHECKPOINT postgres >/dev/null
    sync
    sync
    before=$(du -sb "$repo" | cut -f1)
    /usr/bin/time -f '%e %M' -o "$work/time" bash -c "$fn" || { echo "$fn failed" >&2; cat "$work/time" >&2; exit 1; }
    after=$(du -sb "$repo" | cut -f1)
    read -r secs kib < <(tail -n 1 "$work/time")
    if [[ $phase == restore ]]; then
        echo "$tool,restore,$n,$secs,,$kib,$after" >>"$csv"
    else
        echo "$tool,snapshot,$n,$secs,$((after - before)),$kib,$after" >>"$csv"
    fi
    printf '  %-6s %-8s %2s  %7.2f s  %6d MB peak  repo %s MB\n' "$tool" "$phase" "$n" "$secs" $((kib / 1024)) $((after / 1000000)) >&2
}

db_fingerprint() {
    psql -XAtc "SELECT (SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts) || ' ' ||
        (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT count(*) || '/' || sum(length(body)) FROM posts) || ' ' ||
        (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM uploads)" "$1"
}
dir_fingerprint() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }

for n in $(seq 1 "$ROUNDS"); do
    if ((n > 1)); then
        echo "round $n: activity" >&2
        activity "$n"
    fi
    echo "snapshot $n" >&2
    for t in "${tools[@]}"; do measure "$t" snapshot "$n" "snapshot_$t"; done
    if ((n == 2 || (ROUNDS < 2 && n == 1))); then
        echo "restore of snapshot $n" >&2
        want_db=$(db_fingerprint app) want_dir=$(dir_fingerprint "$storage")
        for t in "${tools[@]}"; do
            createdb "restore_$t"
            measure "$t" restore "$n" "restore_$t"
            got_dir="$work/restore-$t"
            [[ $t == restic ]] && got_dir="$work/restore-restic$storage"
            [[ $t == borg || $t == plain ]] && got_dir="$got_dir/storage"
            if [[ $(db_fingerprint "restore_$t") != "$want_db" || $(dir_fingerprint "$got_dir") != "$want_dir" ]]; then
                echo "  $t: RESTORE DIFFERS from the source" >&2
                echo "$t,restore-mismatch,$n,,,," >>"$csv"
            else
                echo "  $t: restore matches the source (row counts, sums; every file's SHA-256)" >&2
            fi
            dropdb "restore_$t"
            rm -rf "$work/restore-$t"
        done
    fi
done

# ---------------------------------------------------------------- report
cp "$csv" "$orig_pwd/compare-results.csv"
python3 "$here/report.py" svg "$csv" "$root/docs/compare-repository-size.svg"
echo
echo "data set: $dataset"
echo "tools: restic $(restic version | awk '{print $2}') (--compression auto, repository v2)," \
    "$(borg --version) (--compression zstd,3, no encryption), snap $("$snap" --version 2>/dev/null || echo '?')"
echo
python3 "$here/report.py" table "$csv"
echo
echo "CSV: $orig_pwd/compare-results.csv; chart: $root/docs/compare-repository-size.svg" >&2
