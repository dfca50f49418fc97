#if canImport(Glibc)
    import Glibc
#endif

/// The user a repository belongs to: the owner of its folder.
///
/// Everything in a repository is 0600 or 0700, so a file another user creates there is one the
/// owner can no longer read: one run as root used to leave objects the owner's restore, check and
/// prune then failed on. A repository therefore keeps one owner. Root, which a scheduled job or an
/// admin's `sudo` often is, may read every storage folder, so it is not refused: it gives each
/// file and folder it creates in another user's repository to that user (through the descriptor it
/// created, so a link planted in the repository cannot redirect the chown). Any other user who is
/// not the owner may read what the modes let it read, but not write (`checkWriter`).
///
/// A permission error met in the repository is reported as what it is, with the command that
/// fixes it (`explain`), never as damage: the bytes are there, only the rights are wrong.
public struct RepositoryOwner: Sendable, Equatable {
    public let uid: uid_t
    public let gid: gid_t
    /// The repository folder, for messages.
    let path: String

    /// The owner of the folder at `path`.
    init(of path: String) throws {
        guard let status = try Posix.status(path, in: nil) else {
            throw SnapError(.notARepository, "\(path) does not exist; create a repository with `snap init`")
        }
        self.init(uid: status.owner, gid: status.group, path: path)
    }

    init(uid: uid_t, gid: gid_t, path: String) {
        self.uid = uid
        self.gid = gid
        self.path = path
    }

    /// The owner's login name, for messages.
    public var name: String { Posix.userName(uid) }

    /// Whether this process is root writing into another user's repository.
    var adopts: Bool { geteuid() == 0 && uid != 0 }

    /// Refuses a run that would add or delete as a user who is neither the owner nor root: the
    /// files it wrote would be its own, unreadable to the owner.
    func checkWriter() throws {
        let me = geteuid()
        guard me != uid, me != 0 else { return }
        throw SnapError(
            .invalidInput,
            "the repository at \(path) belongs to \(name), and snap runs as \(Posix.userName(me)): what it wrote would be unreadable to \(name); run snap as \(name) (`sudo -u \(name) snap ...`); nothing was changed"
        )
    }

    /// Gives a file or folder this run created (through its descriptor) to the owner, when root
    /// creates it in another user's repository.
    func adopt(_ handle: FileHandle) throws {
        guard adopts else { return }
        guard fchown(handle.fd, uid, gid) == 0 else {
            throw SnapError(.io, "cannot give \(handle.path) to the repository's owner \(name)", cause: Errno(errno))
        }
    }

    /// Creates a folder (0700) unless it exists, and gives it to the owner when this run made it.
    /// Returns whether it made it.
    @discardableResult
    func makeFolder(_ folder: String) throws -> Bool {
        guard mkdir(folder, 0o700) == 0 else {
            if errno == EEXIST { return false }
            throw explain(SnapError(.io, "cannot create folder \(folder)", cause: Errno(errno)))
        }
        if adopts { try adopt(try FileHandle.open(folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)) }
        return true
    }

    /// `error` spelled out when the system refused for lack of rights: who owns the repository,
    /// who snap runs as, and the command that fixes it. Other errors are returned as they are.
    public func explain(_ error: any Error) -> any Error {
        guard let error = error as? SnapError, error.errorNumber == EACCES || error.errorNumber == EPERM else {
            return error
        }
        let me = geteuid()
        let fix: String
        if me != uid && me != 0 {
            fix =
                "the repository at \(path) belongs to \(name), and snap runs as \(Posix.userName(me)); run snap as \(name) (`sudo -u \(name) snap ...`)"
        } else {
            fix =
                "something in the repository at \(path) does not belong to its owner \(name) or lacks the owner's rights (an older snap run as root left such files); the data is intact: give it back with `sudo chown -R \(uid):\(gid) \(path) && sudo chmod -R u+rwX \(path)`"
        }
        return SnapError(error.code, "\(error.message): permission denied; \(fix)")
    }

    /// Runs `body`, explaining a permission error it throws.
    func explaining<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw explain(error)
        }
    }
}

extension SnapError {
    /// The system error number this error carries, if any.
    var errorNumber: Int32? { (cause as? Errno)?.rawValue }
}
