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

/// A new file written under a temporary name and renamed into place when complete, so that an
/// interrupted export never leaves a truncated archive under the real name.
final class AtomicOutputFile {
    let path: String
    let temporary: String
    let stream: OutputStream
    private var committed = false

    init(_ path: String) throws {
        if FileManager.default.fileExists(atPath: path) {
            throw CommandFailure(
                message: "\(path) exists already; remove it or choose another path", status: ExitStatus.failure)
        }
        let url = URL(fileURLWithPath: path)
        temporary =
            url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())").path
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SnapError(.io, "cannot create \(path)", cause: Errno(errno)) }
        self.path = path
        stream = OutputStream(fd: fd, path: path)
    }

    deinit {
        if !committed { unlink(temporary) }
        close(stream.fd)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws { try stream.write(bytes) }

    func commit() throws {
        guard fsync(stream.fd) == 0 else { throw SnapError(.io, "cannot fsync \(path)", cause: Errno(errno)) }
        guard link(temporary, path) == 0 else {
            throw SnapError(.io, "cannot create \(path)", cause: Errno(errno))
        }
        unlink(temporary)
        committed = true
    }
}
