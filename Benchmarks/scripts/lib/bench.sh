# Sourced by the benchmark scripts. Needs $root (the repository's top folder).
#   build_snap SCRATCH          sets $snap: $SNAP_BIN if given, else a release build made with
#                               `swift build --scratch-path SCRATCH`
#   default_snap_bins           sets SNAP_BINS ("name=path ...", binaries to compare) to a release
#                               build of this tree, "snap=...", unless it is set
#   time_run COMMAND...         runs it under GNU time (output discarded); prints "WALL_SECONDS
#                               PEAK_MIB" (needs $work)
#   fresh_repository BIN REPO   an empty repository at REPO made by BIN, no files cache
#                               ($SNAP_CACHE_DIR removed), everything on disk (sync)
#   make_work_folder NAME SIZE  sets $work to a new folder under ${COMPARE_TMPDIR:-/var/tmp}, and
#                               removes it (and stops a cluster in $work/pg) at exit. With
#                               COMPARE_FRESH_FS=1 (the default as root) the folder is a fresh ext4
#                               filesystem of its own: a sparse image of SIZE (truncate's units)
#                               mounted through a loop device, so that the host filesystem's history
#                               does not decide the results (after mass deletions, ext4 here spent
#                               seconds allocating inodes: that hits snap, one file per object, far
#                               more than restic and borg, which write pack files). Sets $fresh_fs.

build_snap() {
    local scratch=$1
    if [[ -n "${SNAP_BIN:-}" ]]; then
        snap="$SNAP_BIN"
        return
    fi
    echo "building snap (release, --scratch-path $scratch)" >&2
    (cd "$root" && swift build -c release --scratch-path "$scratch" --product snap >&2)
    snap="$(cd "$root" && swift build -c release --scratch-path "$scratch" --show-bin-path)/snap"
}

default_snap_bins() {
    if [[ -z "${SNAP_BINS:-}" ]]; then
        build_snap .build-release
        SNAP_BINS="snap=$snap"
    fi
}

time_run() {
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null
    awk '{ printf "%s %.0f\n", $1, $2 / 1024 }' "$work/time"
}

fresh_repository() {
    rm -rf "$2" "$SNAP_CACHE_DIR"
    "$1" --repo "$2" init >/dev/null
    sync
}

make_work_folder() {
    local name=$1 size=$2
    work="$(mktemp -d "${COMPARE_TMPDIR:-/var/tmp}/$name.XXXXXX")"
    fresh_fs="${COMPARE_FRESH_FS:-$([[ $(id -u) -eq 0 ]] && echo 1 || echo 0)}"
    trap remove_work_folder EXIT
    if [[ $fresh_fs == 1 ]]; then
        truncate -s "$size" "$work.img"
        mkfs.ext4 -q -F "$work.img"
        mount -o loop "$work.img" "$work"
        rmdir "$work/lost+found"
    fi
    chmod 755 "$work" # the postgres user needs to reach its cluster folder inside
}

remove_work_folder() {
    if declare -F pg_stop >/dev/null; then pg_stop "$work/pg"; fi
    if [[ $fresh_fs == 1 ]]; then
        umount "$work" 2>/dev/null || true
        rm -f "$work.img"
    fi
    rm -rf "$work"
}
