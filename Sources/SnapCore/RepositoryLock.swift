import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A kernel lock (`flock`) on `<repo>/lock`: shared for commands that read (restore, export,
/// check, diff, stats) or add (snapshot, import), exclusive for those that delete (forget, prune).
///
/// The kernel drops the lock when the process ends, however it ends, so a killed run never leaves
/// a stale lock behind. Snapshots never delete and prune never runs beside them, so prune cannot
/// delete an object that an in-flight snapshot is about to reference. That holds only if every
/// writer locks the same file: a command that adds therefore never runs without it, and refuses
/// (saying why and what to do) when it cannot open or create it. Only a reader on a read-only
/// filesystem, where nothing can delete, may go on without one.
public final class RepositoryLock {
    public enum Kind: Sendable {
        /// Commands that only read: a shared lock; without a lock file on a read-only filesystem,
        /// none.
        case shared
        /// Commands that add to the repository: a shared lock, always on `<repo>/lock`.
        case adding
        /// Commands that delete: an exclusive lock on `<repo>/lock`.
        case exclusive
    }

    /// Nil only for a reader of a repository on a read-only filesystem that has no lock file.
    private let handle: FileHandle?
    public let kind: Kind

    private init(handle: FileHandle?, kind: Kind) {
        self.handle = handle
        self.kind = kind
    }

    deinit { if let handle { flock(handle.fd, LOCK_UN) } }

    /// Takes the lock, waiting up to `timeout` seconds (nil: forever) while another process holds
    /// a conflicting one; `onWait` is told once, when waiting starts.
    public static func acquire(
        _ kind: Kind, repository: Repository, timeout: Double?, onWait: (String) -> Void = { _ in }
    ) throws -> RepositoryLock {
        if kind != .shared { try repository.owner.checkWriter() }
        guard let handle = try openLockFile(kind, repository: repository) else {
            return RepositoryLock(handle: nil, kind: kind)
        }
        let path = handle.path
        let operation = kind == .exclusive ? LOCK_EX : LOCK_SH
        let started = Timestamp.now()
        var told = false
        while flock(handle.fd, operation | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                throw SnapError(.io, "cannot lock \(path)", cause: Errno(errno))
            }
            let waited = Double(Timestamp.now().nanoseconds - started.nanoseconds) / 1e9
            let what = kind == .exclusive ? "another command" : "a forget or prune"
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

    /// `<repo>/lock`, opened for reading (a `flock` needs no more), or created when missing (a
    /// repository made by another program may have none): by the owner, or by root for the
    /// owner. Nil for a reader on a read-only filesystem without one.
    private static func openLockFile(_ kind: Kind, repository: Repository) throws -> FileHandle? {
        let path = join(repository.path, "lock")
        let owner = repository.owner
        do {
            do {
                return try FileHandle.open(path, O_RDONLY | O_NOFOLLOW)
            } catch let error as SnapError where error.errorNumber == ENOENT {
                let handle = try FileHandle.open(path, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
                try owner.adopt(handle)
                return handle
            }
        } catch let error as SnapError where error.errorNumber == EEXIST {
            // Another run created it just now.
            return try owner.explaining { try FileHandle.open(path, O_RDONLY | O_NOFOLLOW) }
        } catch let error as SnapError where error.errorNumber == EROFS {
            guard kind == .shared else {
                throw SnapError(
                    .invalidInput,
                    "the repository at \(repository.path) is on a read-only filesystem and has no lock file; this command writes to it: mount it read-write; nothing was changed"
                )
            }
            // Nothing can delete on a read-only filesystem: a reader needs no lock there.
            return nil
        } catch {
            let explained = owner.explain(error)
            throw SnapError(
                .io,
                "cannot lock the repository at \(repository.path) (snap never uses it unlocked while it can be written): \(explained)"
            )
        }
    }
}
