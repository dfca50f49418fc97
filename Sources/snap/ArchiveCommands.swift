import ArgumentParser
import Foundation
import SnapArchive
import SnapCore

#if canImport(Glibc)
    import Glibc
#endif

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a snapshot as a classic backup_YYYYMMDD_HHMMSS.tar.gz.",
        discussion: """
            The archive holds database.dump (the exact pg_dump custom-format bytes, for pg_restore)
            and storage/... with modes, mtimes, folders and symlinks: what a plain backup.sh makes.
            PATH is a file, a folder (the name comes from the snapshot's UTC time), or - for standard
            output; the default is the current folder. An existing file is never overwritten.

            Examples:
              snap export latest -o /mnt/offsite/
              snap export 3fa9 -o - | ssh backup@host 'cat > app.tar.gz'
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Snapshot id, prefix or `latest`.")
    var id: String

    @Option(name: .short, help: ArgumentHelp("A file, a folder, or - for standard output.", valueName: "path"))
    var output: String = "."

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .shared)
        defer { withExtendedLifetime(lock) {} }
        let snapshot = try repository.resolve(id)
        let exporter = SnapshotExporter(repository: repository, snapshot: snapshot)
        if output == "-" {
            guard isatty(1) == 0 else {
                throw CommandFailure(
                    message:
                        "refusing to write a binary archive to a terminal; redirect standard output or pass -o FILE",
                    status: ExitStatus.usage)
            }
            let stdout = OutputStream(fd: 1, path: "standard output")
            do {
                _ = try exporter.write(to: stdout.write)
            } catch  where stdout.closedByReader {
                // `snap export - | head`: the reader has all it wants; end quietly, like a pipe does.
                Foundation.exit(128 + SIGPIPE)
            }
            return
        }
        var isFolder: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: output, isDirectory: &isFolder)
        let path =
            exists && isFolder.boolValue
            ? (output as NSString).appendingPathComponent(SnapshotExporter.fileName(for: snapshot)) : output
        let file = try AtomicOutputFile(path)
        let statistics = try exporter.write(to: file.write)
        try file.commit()
        print(path)
        StandardError.write(
            "snap: exported snapshot \(snapshot.shortID): \(statistics.entries) entries, \(formatBytes(statistics.bytesIn)) of tar in \(formatBytes(statistics.bytesOut)) of gzip\n"
        )
    }
}

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Take plain-approach backup_*.tar.gz files in as snapshots.",
        discussion: """
            Each archive holds database.dump and/or storage/, at the top or under one top folder. It
            becomes a snapshot dated from its backup_YYYYMMDD_HHMMSS name (read as UTC; else its
            newest entry), tagged `imported`, and deduplicated against everything already stored.
            Given a folder, every .tar.gz in it is imported, oldest first; archives imported before
            are skipped. A dump made with pg_dump's default compression is stored as it is, but
            deduplicates poorly (see docs/IMPORT.md).

            Examples:
              snap import /var/backups/backup_20260101_020000.tar.gz
              snap import /var/backups/
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Archives, or folders of archives.")
    var paths: [String]

    @Flag(name: .long, help: "Print a JSON array of the snapshots made.")
    var json = false

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .adding)
        defer { withExtendedLifetime(lock) {} }
        let importer = BackupImporter(repository: repository, program: "snap \(Snap.version)")
        var archives: [String] = []
        for path in paths { archives += try BackupImporter.archives(at: path) }
        guard !archives.isEmpty else {
            throw CommandFailure(
                message: "no .tar.gz archives found in \(paths.joined(separator: ", "))", status: ExitStatus.failure)
        }
        var made: [SnapshotSummary] = []
        for archive in archives {
            if let previous = try importer.previousImport(of: archive) {
                StandardError.write("snap: skipped \(archive): imported before as snapshot \(previous.shortID)\n")
                continue
            }
            let snapshot: Snapshot
            do {
                snapshot = try importer.importArchive(archive)
            } catch {
                // The archives before this one are snapshots now: say so, and list them.
                guard !made.isEmpty else { throw error }
                if json { try printJSON(made) }
                throw CommandFailure(
                    message:
                        "\(error); the \(made.count) archive(s) before it were imported and stay (a new import skips them)",
                    status: ExitStatus.failure)
            }
            made.append(SnapshotSummary(snapshot))
            if !json { print("imported \(archive) as snapshot \(snapshot.id)") }
            if snapshot.record.sources.imported?.compressedDump == true {
                StandardError.write(
                    "snap: note: \(archive) has a compressed database.dump (pg_dump's default); it is stored as it is but deduplicates poorly\n"
                )
            }
        }
        if json { try printJSON(made) }
    }
}

/// Writes to a file descriptor; remembers when the reader went away (EPIPE).
final class OutputStream: @unchecked Sendable {
    let fd: Int32
    let path: String
    private(set) var closedByReader = false

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let count = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if count > 0 {
                offset += count
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                let failure = count < 0 ? errno : EIO
                if failure == EPIPE { closedByReader = true }
                throw SnapError(.io, "cannot write \(path)", cause: Errno(failure))
            }
        }
    }
}

/// A new file that appears under its name only when complete, and leaves nothing behind when the
/// export stops before that.
///
/// The file is made with `O_TMPFILE`: nameless in the target folder, so an interrupted export,
/// even by SIGKILL or a power cut, leaves nothing behind; `commit` makes it durable and links it
/// into place through `/proc/self/fd` (`linkat` never replaces an existing file). Where the
/// filesystem cannot make nameless files (or `/proc` is not mounted), it falls back to a hidden
/// `.NAME.tmp-PID-RANDOM` in the same folder, created exclusively, linked into place at the end,
/// and removed on an error, on SIGINT, SIGTERM and SIGHUP (`TemporaryFileCleanup`); only a SIGKILL
/// or a crash can then leave it.
final class AtomicOutputFile {
    let path: String
    let stream: OutputStream
    /// The named temporary of the fallback; nil for a nameless file.
    private let temporary: String?
    private var committed = false

    /// `__O_TMPFILE | O_DIRECTORY`: Swift's Glibc module leaves the macro out; the value is the
    /// same on every architecture Swift runs Linux on.
    private static let O_TMPFILE = Int32(0o20000000) | O_DIRECTORY

    init(_ path: String) throws {
        if FileManager.default.fileExists(atPath: path) {
            throw CommandFailure(
                message: "\(path) exists already; remove it or choose another path", status: ExitStatus.failure)
        }
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        self.path = path
        var fd: Int32 = -1
        if ProcessInfo.processInfo.environment["SNAP_TEST_NO_TMPFILE"] != "1" {
            fd = open(folder, Self.O_TMPFILE | O_WRONLY | O_CLOEXEC, 0o600)
            if fd < 0 && ![EOPNOTSUPP, EISDIR, EINVAL].contains(errno) {
                throw SnapError(.io, "cannot create \(path)", cause: Errno(errno))
            }
            // Linking it needs /proc: without it, use the fallback from the start.
            if fd >= 0 && access("/proc/self/fd/\(fd)", F_OK) != 0 {
                close(fd)
                fd = -1
            }
        }
        if fd >= 0 {
            temporary = nil
        } else {
            let name =
                ".\(url.lastPathComponent).tmp-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            let temporary = url.deletingLastPathComponent().appendingPathComponent(name).path
            fd = try TemporaryFileCleanup.create(temporary)
            self.temporary = temporary
        }
        stream = OutputStream(fd: fd, path: path)
    }

    deinit {
        if !committed, let temporary { TemporaryFileCleanup.remove(temporary) }
        close(stream.fd)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws { try stream.write(bytes) }

    /// Makes the file durable, then gives it its name, then makes the name durable.
    func commit() throws {
        guard fsync(stream.fd) == 0 else { throw SnapError(.io, "cannot fsync \(path)", cause: Errno(errno)) }
        let linked =
            if let temporary {
                link(temporary, path)
            } else {
                linkat(AT_FDCWD, "/proc/self/fd/\(stream.fd)", AT_FDCWD, path, AT_SYMLINK_FOLLOW)
            }
        guard linked == 0 else {
            let error = errno
            if error == EEXIST {
                throw CommandFailure(
                    message:
                        "\(path) was created while the export ran; it is left as it was: remove it or choose another path",
                    status: ExitStatus.failure)
            }
            throw SnapError(.io, "cannot create \(path)", cause: Errno(error))
        }
        committed = true
        if let temporary { TemporaryFileCleanup.remove(temporary) }
        let folder = open(
            URL(fileURLWithPath: path).deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            defer { close(folder) }
            guard fsync(folder) == 0 else {
                throw SnapError(.io, "cannot fsync the folder of \(path)", cause: Errno(errno))
            }
        }
    }
}

/// Removes a named temporary file when SIGINT, SIGTERM or SIGHUP ends snap, then lets the signal
/// act as it did before (forwarded to children, or the default). The handler only calls
/// `unlink` on a path kept in memory allocated up front, which is async-signal-safe. One file at
/// a time.
enum TemporaryFileCleanup {
    static let signals = [SIGINT, SIGTERM, SIGHUP]
    /// The path being cleaned up, NUL-terminated; an empty string when none.
    nonisolated(unsafe) static let path: UnsafeMutablePointer<CChar> = {
        let path = UnsafeMutablePointer<CChar>.allocate(capacity: Int(PATH_MAX) + 1)
        path.initialize(repeating: 0, count: Int(PATH_MAX) + 1)
        return path
    }()
    /// The handlers in place before, by signal number.
    nonisolated(unsafe) static let previous: UnsafeMutablePointer<sigaction> = {
        let previous = UnsafeMutablePointer<sigaction>.allocate(capacity: 65)
        previous.initialize(repeating: sigaction(), count: 65)
        return previous
    }()

    /// Creates `temporary` exclusively (0600) with the cleanup armed; returns its descriptor.
    static func create(_ temporary: String) throws -> Int32 {
        let bytes = Array(temporary.utf8)
        guard bytes.count <= Int(PATH_MAX), !bytes.contains(0) else {
            throw SnapError(.invalidInput, "cannot create \(temporary): the name is too long")
        }
        // The path is in place before the file exists: a signal that comes in between removes
        // nothing (the name is ours alone: pid and random digits). The first byte goes last, so a
        // handler never sees half a path.
        for (index, byte) in bytes.enumerated().dropFirst() { path[index] = CChar(bitPattern: byte) }
        path[bytes.count] = 0
        path[0] = CChar(bitPattern: bytes[0])
        for signal in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = cleanUpAndResignal
            sigemptyset(&action.sa_mask)
            sigaction(signal, &action, previous + Int(signal))
            // `nohup`: a signal snap was started to ignore stays ignored.
            if unsafeBitCast(previous[Int(signal)].__sigaction_handler.sa_handler, to: Int.self)
                == unsafeBitCast(SIG_IGN, to: Int.self)
            {
                sigaction(signal, previous + Int(signal), nil)
            }
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let error = errno
            disarm()
            throw SnapError(.io, "cannot create \(temporary)", cause: Errno(error))
        }
        return fd
    }

    /// Removes `temporary` and disarms the cleanup.
    static func remove(_ temporary: String) {
        unlink(temporary)
        disarm()
    }

    private static func disarm() {
        path[0] = 0
        for signal in signals { sigaction(signal, previous + Int(signal), nil) }
    }
}

private func cleanUpAndResignal(_ signal: Int32) {
    if TemporaryFileCleanup.path[0] != 0 { unlink(TemporaryFileCleanup.path) }
    var previous = TemporaryFileCleanup.previous[Int(signal)]
    sigaction(signal, &previous, nil)
    raise(signal)
}
