import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A kernel lock (`flock`) on `<repo>/lock`: shared for commands that read or add (snapshot,
/// restore, export, import, check), exclusive for those that delete (forget, prune).
///
/// The kernel drops the lock when the process ends, however it ends, so a killed run never leaves
/// a stale lock behind. Snapshots never delete and prune never runs beside them, so prune cannot
/// delete an object that an in-flight snapshot is about to reference.
public final class RepositoryLock {
    public enum Kind: Sendable {
        case shared
        case exclusive
    }

    private let handle: FileHandle
    public let kind: Kind

    private init(handle: FileHandle, kind: Kind) {
        self.handle = handle
        self.kind = kind
    }

    deinit { flock(handle.fd, LOCK_UN) }

    /// Takes the lock, waiting up to `timeout` seconds (nil: forever) while another process holds
    /// a conflicting one; `onWait` is told once, when waiting starts.
    public static func acquire(
        _ kind: Kind, repository: Repository, timeout: Double?, onWait: (String) -> Void = { _ in }
    ) throws -> RepositoryLock {
        let path = join(repository.path, "lock")
        let handle: FileHandle
        do {
            handle = try FileHandle.open(path, O_RDWR | O_CREAT, mode: 0o600)
        } catch let error as SnapError {
            // A repository on a read-only mount (an offsite disk) can still be read from: a shared
            // flock needs no write access, and nothing can delete on such a mount anyway.
            guard kind == .shared, let cause = error.cause as? Errno,
                cause.rawValue == EROFS || cause.rawValue == EACCES
            else { throw error }
            // A repository made by another program may have no lock file: the folder then.
            handle =
                try (try? FileHandle.open(path, O_RDONLY)) ?? FileHandle.open(repository.path, O_RDONLY | O_DIRECTORY)
        }
        let operation = kind == .shared ? LOCK_SH : LOCK_EX
        let started = Timestamp.now()
        var told = false
        while flock(handle.fd, operation | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                throw SnapError(.io, "cannot lock \(path)", cause: Errno(errno))
            }
            let waited = Double(Timestamp.now().nanoseconds - started.nanoseconds) / 1e9
            let what = kind == .shared ? "a forget or prune" : "another command"
            if let timeout, waited >= timeout {
                throw SnapError(
                    .locked,
                    "the repository at \(repository.path) is busy: \(what) holds its lock; try again later or pass --wait SECONDS"
                )
            }
            if !told {
                onWait("waiting for \(what) to finish with the repository at \(repository.path)")
                told = true
            }
            usleep(100_000)
        }
        return RepositoryLock(handle: handle, kind: kind)
    }
}
