import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A snapshot makes durable what it wrote, and nothing else: a database sharing the repository's
/// filesystem keeps its own writeback. (snap used to call `syncfs`, which forced every dirty page
/// of the filesystem to disk: 2.2 GB of another program's data turned a one-file snapshot of
/// 0.45 s into 1.38 s.)
@Suite(
    .enabled(
        if: geteuid() == 0 || TestCluster.isCI,
        "needs root: it mounts a filesystem of its own and reads page flags (/proc/kpageflags)"))
struct DurabilityTests {
    @Test func aSnapshotLeavesOtherProgramsDirtyDataAlone() throws {
        let folder = try TemporaryDirectory()
        // A filesystem of its own, with a journal as on a server, where written data stays dirty
        // until the kernel's writeback (this test machine's root filesystem writes at once).
        try withLoopFilesystem(in: folder, megabytes: 400) { root in
            let repo = root + "/repo"
            let storage = root + "/storage"
            try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
            try writeFile(storage + "/one.bin", pseudoRandomBytes(100_000, seed: 1))
            #expect(try snap("--repo", repo, "init").status == 0)

            // Another program's data (a database's, say), written and not yet on disk.
            let other = root + "/other-program.dat"
            // (Plain writes: Foundation's Data.write syncs the file.)
            let wrote = try runProcess("dd", ["if=/dev/urandom", "of=\(other)", "bs=1M", "count=64", "status=none"])
            try #require(wrote.succeeded, "dd: \(wrote.stderr)")
            let before = try dirtyPages(other)
            try #require(before > (64 << 20) / 4096 / 2, "the other program's data is on disk already: \(before)")

            let result = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage)
            #expect(result.status == 0, "\(result.stderr)")
            let after = try dirtyPages(other)
            // The kernel may start writing some of it back meanwhile, not most of it in a second.
            #expect(after > before / 2, "the snapshot forced another program's data to disk: \(before) -> \(after)")

            // What the snapshot wrote is there, whole.
            #expect(try snap("--repo", repo, "check", "--read-data").status == 0)
        }
    }
}

/// Runs `body` with the mount point of a new ext4 filesystem (an image file in `folder`, through
/// a loop device), unmounted afterwards.
private func withLoopFilesystem(in folder: TemporaryDirectory, megabytes: Int, _ body: (String) throws -> Void)
    throws
{
    let image = folder.file("filesystem.img")
    let mountPoint = folder.file("mnt")
    try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
    try #require(try runProcess("truncate", ["-s", "\(megabytes)M", image]).succeeded)
    let made = try runProcess("mkfs.ext4", ["-q", "-F", image])
    try #require(made.succeeded, "mkfs.ext4: \(made.stderr)")
    let mounted = try runProcess("mount", ["-o", "loop", image, mountPoint])
    try #require(mounted.succeeded, "cannot mount a loop filesystem: \(mounted.stderr)")
    defer {
        if (try? runProcess("umount", [mountPoint]))?.succeeded != true {
            _ = try? runProcess("umount", ["-l", mountPoint])
        }
    }
    try body(mountPoint)
}

/// The pages of `path` the kernel holds dirty (written, not yet on disk): its pages are mapped
/// and their flags read from /proc/self/pagemap and /proc/kpageflags (bit 4, KPF_DIRTY).
private func dirtyPages(_ path: String) throws -> Int {
    let script = """
        import ctypes, mmap, os, struct, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        pages = (size + 4095) // 4096
        for page in range(pages):
            m[page * 4096]  # maps the page without writing it
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as flags:
            pagemap.seek(address // 4096 * 8)
            entries = struct.unpack("%dQ" % pages, pagemap.read(8 * pages))
            dirty = 0
            for entry in entries:
                frame = entry & ((1 << 55) - 1)
                if not entry >> 63 or frame == 0:
                    sys.exit("no page frame numbers in /proc/self/pagemap (needs CAP_SYS_ADMIN)")
                flags.seek(frame * 8)
                dirty += struct.unpack("Q", flags.read(8))[0] >> 4 & 1
        print(dirty)
        """
    let result = try run("/usr/bin/python3", ["-c", script, path])
    guard result.status == 0, let count = Int(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else {
        throw CocoaError(
            .fileReadUnknown,
            userInfo: [NSLocalizedDescriptionKey: "cannot read the page flags of \(path): \(result.stderr)"])
    }
    return count
}
