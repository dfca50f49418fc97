import CLinux
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What a restore of a storage tree would do, found without changing anything (`Restorer.plan`).
public struct RestorePlan: Sendable {
    /// Entries of one kind of change: how many of each kind, and the first few paths.
    public struct Changes: Sendable, Equatable {
        public var files = 0
        public var symlinks = 0
        public var folders = 0
        /// The first paths, in the order the restore meets them. Of a folder removed with its
        /// content, only the folder.
        public var examples: [String] = []
        public var count: Int { files + symlinks + folders }

        mutating func add(_ kind: FileStatus.Kind, _ path: @autoclosure () -> String, examples limit: Int) {
            switch kind {
            case .directory: folders += 1
            case .symlink: symlinks += 1
            // Sockets, FIFOs and devices (only ever removed) count as files.
            case .regular, .other: files += 1
            }
            if examples.count < limit { examples.append(path()) }
        }
    }

    /// How the tree gets into the target.
    public enum Method: Sendable, Equatable {
        /// Built in a new folder beside the target, then swapped in: a restore that fails or is
        /// killed leaves the target as it was, or complete.
        case beside
        /// Written into the target itself, for the reason given: a restore that fails leaves it
        /// partly restored.
        case inPlace(reason: String)
    }

    /// In the snapshot, not in the target: written new.
    public var new = Changes()
    /// In both, but with another kind, size, mode, time or link target: written again.
    public var replaced = Changes()
    /// In both with the same kind, size, mode and time (and link target); content is not read.
    public var unchanged = Changes()
    /// In the target, not in the snapshot: removed (only with `--clean`; without, the target is
    /// empty). A folder counts with everything in it.
    public var removed = Changes()
    /// Bytes of file content the restore writes.
    public var bytes: UInt64 = 0
    public var method: Method = .beside
    /// What the survey could not see or what else the user should know, one line each.
    public var notes: [String] = []
}

/// Puts a snapshot's storage tree back into a folder, exactly: content, modes, mtimes, empty
/// folders and symlinks (as links, never followed).
///
/// Nothing is written outside the target: every path is checked (no absolute paths, no `.` or
/// `..`, the depth-first order of FORMAT §7.4, so every entry's parent is a folder entry of the
/// snapshot and nothing sits below a symlink), and folders are opened one component at a time
/// with `O_NOFOLLOW`, so a symlink in the target cannot redirect a write either.
///
/// The tree is built in a new folder beside the target (`.snap-restore-<hex>-<name>`, in the
/// same parent, so on the same filesystem), then swapped in with one `renameat2`
/// (`RENAME_EXCHANGE`, or `RENAME_NOREPLACE` for a missing target), and the old tree removed
/// after: killed or failed at any point, the target is the old tree or the new one, complete,
/// and at most that folder is left beside it. Where a swap cannot hold (see `RestorePlan.Method`),
/// the tree is written in place, as a note says.
///
/// Memory and time are linear in the manifest (the sum of its paths), whatever the depth: the
/// manifest is read once per pass, checked with one path in memory, and the folders are walked
/// with a `FolderStack`.
///
/// The steps are separate so that a caller can swap the folder in only once its other work (the
/// database) has succeeded: `prepare` (every check, nothing written), `stage` (the new tree),
/// `commit` (the swap) or `discard`; `run` does all of them.
public final class Restorer {
    public struct Statistics: Sendable {
        public var files = 0
        public var directories = 0
        public var symlinks = 0
        public var bytes: UInt64 = 0
        public var removed = 0
    }

    let repository: Repository
    let snapshot: Snapshot
    let target: String
    let clean: Bool
    /// Called with what the user should know: why the tree is written in place, what a killed
    /// restore left, an old tree that could not be removed. One line each, without a prefix.
    public var onNote: (String) -> Void = { _ in }
    private let decompressor = ZstdDecompressor()
    fileprivate lazy var lineage = RepositoryLineage(repository.path)

    /// Set-user-ID and set-group-ID: never restored on files (see `writeFile`).
    public static let setIDBits: UInt32 = 0o6000

    /// Examples a plan computed by `prepare` keeps.
    private static let preparedExamples = 5

    public init(repository: Repository, snapshot: Snapshot, target: String, clean: Bool) {
        self.repository = repository
        self.snapshot = snapshot
        self.target = target
        self.clean = clean
    }

    /// Whether the snapshot has a storage tree to restore.
    public static func hasStorage(_ snapshot: Snapshot) -> Bool { snapshot.record.sources.storage != nil }

    /// What `prepare` found.
    private struct Preparation {
        var plan: RestorePlan
        var examples: Int
        /// The target as an absolute path, symlinks above it resolved.
        var resolved: String
        /// The target as it was, or nil when missing.
        var existing: FileStatus?
        /// File bytes, rounded up to blocks, and entries a tree beside would take.
        var room: (bytes: UInt64, entries: UInt64)
    }
    private var preparation: Preparation?

    /// Where `stage` left the tree.
    private enum Staged {
        /// Built beside, in `name` in `parent`, not yet swapped in.
        case beside(parent: FileHandle, name: String, root: FileHandle, statistics: Statistics)
        /// Written in place: nothing is left to swap, and nothing can be undone.
        case inPlace
        /// Swapped in, or removed: done.
        case finished
    }
    private var staged: Staged?

    /// How the last `stage` wrote (or `prepare` would write) the tree; nil before `prepare`.
    public var method: RestorePlan.Method? { preparation?.plan.method }

    // MARK: The steps

    /// Checks everything that can be checked before writing: every path of the snapshot is safe
    /// and every object it needs is there; the target is a folder that is missing or empty
    /// (unless `clean`), that neither holds the repository nor reaches it (a bind mount), and
    /// whose mount points, if any, the restore need not remove. Also works out the plan and how
    /// the tree will be written. Throws with nothing written. Later steps call it when it has not
    /// been called.
    public func prepare() throws {
        guard preparation == nil else { return }
        try checkTarget()
        preparation = try survey(examples: Self.preparedExamples)
    }

    /// What a restore would do, counted without changing anything, after the same checks as
    /// `prepare`: entries written new, replaced, unchanged and (with `clean`) removed, with the
    /// first `examples` paths of each, and whether the tree would be built beside the target or
    /// written in place (and why).
    public func plan(examples: Int = 5) throws -> RestorePlan {
        try prepare()
        if preparation!.examples != examples { preparation = try survey(examples: examples) }
        return preparation!.plan
    }

    /// Writes the tree: beside the target when the plan says so (a failure removes what was
    /// built and leaves the target as it was), else in place (a failure leaves it partly
    /// restored). Nothing is swapped in until `commit`.
    public func stage() throws -> Statistics {
        try prepare()
        precondition(staged == nil, "stage() runs once")
        var preparation = preparation!
        if case .beside = preparation.plan.method {
            do {
                let (parent, name, root) = try makeStagingFolder(preparation)
                staged = .beside(parent: parent, name: name, root: root, statistics: Statistics())
                do {
                    var statistics = try pass(.build, root: root)
                    // The old tree goes once the new one is in: a power cut after that must not
                    // find the new tree's data unwritten. One syncfs for the whole tree (a restore
                    // is rare, and an fsync per file costs a journal commit each: seconds per
                    // thousand files).
                    guard syncfs(root.fd) == 0 else {
                        throw SnapError(.io, "cannot make the restored tree durable", cause: Errno(errno))
                    }
                    statistics.removed = preparation.plan.removed.count
                    staged = .beside(parent: parent, name: name, root: root, statistics: statistics)
                    return statistics
                } catch {
                    discard()
                    throw error
                }
            } catch let fallback as FallBack {
                preparation.plan.method = .inPlace(reason: fallback.reason)
                self.preparation = preparation
            }
        }
        guard case .inPlace(let reason) = preparation.plan.method else { preconditionFailure() }
        onNote(
            "restoring the storage folder in place, not beside it: \(reason); a failed restore leaves it partly restored"
        )
        staged = .inPlace
        let root = try openTargetInPlace(preparation)
        return try pass(.update, root: root)
    }

    /// Swaps the tree `stage` built in for the target, then removes the old tree. A no-op after
    /// an in-place `stage`. Throws, with the target as it was, when the swap fails (the staged
    /// tree is left for `discard`). An old tree that cannot be removed is named in a note.
    public func commit() throws {
        guard case .beside(let parent, let name, let root, _)? = staged else { return }
        let targetName = lastComponent(preparation!.resolved)
        if let existing = preparation!.existing {
            // The target must still be the folder that was checked.
            guard let now = try Posix.status(targetName, in: parent), FolderIdentity(now) == FolderIdentity(existing)
            else {
                throw SnapError(
                    .invalidInput,
                    "restore target \(target) was replaced while the tree was restored beside it; it was left as it is")
            }
            // The new folder takes the old one's owner and group (root restoring an app's
            // folder; a non-root user's own folder in a group of theirs, checked by `prepare`).
            let made = try root.status()
            if made.owner != existing.owner || made.group != existing.group {
                guard fchown(root.fd, existing.owner, existing.group) == 0 else {
                    throw SnapError(.io, "cannot give the restored folder the owner of \(target)", cause: Errno(errno))
                }
                FaultInjection.step()
            }
        }
        if let failure = Posix.renameExclusively(name, targetName, in: parent, exchange: preparation!.existing != nil) {
            throw SnapError(
                .io, "cannot swap the restored tree in for \(target); the target was left as it was",
                cause: Errno(failure))
        }
        FaultInjection.step()
        staged = .finished
        try? parent.sync()
        guard preparation!.existing != nil else { return }
        // The old tree now has the staging name.
        do {
            try removeTree(Array(name.utf8), in: parent, dryRun: false) { _ in }
        } catch {
            onNote(
                "the previous content of \(target) is left in \(join(stagingParent, name)) (\(error)); remove it by hand"
            )
        }
    }

    /// Removes a tree `stage` built beside the target and did not swap in; the target stays as
    /// it was. After an in-place `stage` it can undo nothing: the target stays partly restored.
    public func discard() {
        guard case .beside(let parent, let name, _, _)? = staged else { return }
        staged = .finished
        do {
            try removeTree(Array(name.utf8), in: parent, dryRun: false) { _ in }
        } catch {
            onNote(
                "the unfinished restore in \(join(stagingParent, name)) could not be removed (\(error)); remove it by hand"
            )
        }
    }

    /// Prepares, stages and commits: the restore the command line runs.
    public func run() throws -> Statistics {
        let statistics = try stage()
        do {
            try commit()
        } catch {
            discard()
            throw error
        }
        return statistics
    }

    // MARK: Checks before writing

    /// Refuses a target that is not a folder, or a non-empty one unless `clean`, or one that holds
    /// the repository or lies inside it (a `--clean` restore would delete the repository).
    private func checkTarget() throws {
        guard let repositoryPath = Posix.resolvedPath(repository.path), let targetPath = Posix.resolvedPath(target)
        else {
            throw SnapError(
                .invalidInput,
                "cannot tell where restore target \(target) lies (a '..' below a folder that does not exist yet?); name the folder plainly"
            )
        }
        if targetPath == repositoryPath
            || repositoryPath.hasPrefix(targetPath.hasSuffix("/") ? targetPath : targetPath + "/")
            || targetPath.hasPrefix(repositoryPath + "/")
        {
            throw SnapError(
                .invalidInput,
                "restore target \(target) holds the repository \(repository.path) or lies inside it; restore to a folder outside the repository"
            )
        }
        guard let status = try Posix.status(target, in: nil) else { return }
        guard status.kind == .directory else {
            throw SnapError(.invalidInput, "restore target \(target) is not a folder; name a new or empty folder")
        }
        if !clean, try !Posix.listDirectory(try FileHandle.open(target, O_RDONLY | O_DIRECTORY)).isEmpty {
            throw SnapError(
                .invalidInput,
                "restore target \(target) is not empty; name a new or empty folder, or pass --clean to make it mirror the snapshot"
            )
        }
    }

    /// Reads the manifest once, checking every entry (`ManifestWalk`) and that its objects are
    /// there, and compares it with the target; then chooses how to write.
    private func survey(examples: Int) throws -> Preparation {
        let resolved = Posix.resolvedPath(target)!  // checkTarget resolved it
        let existing = try Posix.status(resolved, in: nil)
        var root: FileHandle?
        var notes: [String] = []
        if existing != nil {
            do {
                root = try FileHandle.open(resolved, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            } catch {
                notes.append("cannot look inside \(target) (\(reason(error))): what it holds is not counted")
            }
            if let root { try refuseIfRepository(root, status: try root.status()) }
        }
        let pass = TreePass(restorer: self, mode: .survey(examples: examples), root: clean ? root : nil)
        try forEachStorageEntry { try pass.accept($0) }
        try pass.finish()
        var plan = pass.plan
        plan.notes = notes + plan.notes
        var preparation = Preparation(
            plan: plan, examples: examples, resolved: resolved, existing: existing, room: pass.room)
        preparation.plan.method = chooseMethod(preparation, root: root, mountInside: pass.mountInside)
        if let leftovers = leftovers(resolved) { preparation.plan.notes.append(leftovers) }
        return preparation
    }

    /// Beside, unless one of the reasons it cannot hold applies.
    private func chooseMethod(_ preparation: Preparation, root: FileHandle?, mountInside: String?) -> RestorePlan.Method
    {
        let resolved = preparation.resolved
        guard resolved != "/" else { return .inPlace(reason: "the target is the filesystem root") }
        if let existing = preparation.existing {
            let parentDevice = (try? Posix.status(parentPath(of: resolved), in: nil))?.device
            if root?.isMountRoot() ?? (parentDevice != existing.device) {
                return .inPlace(
                    reason: "\(target) is a mount point, and a folder beside it would be on another filesystem")
            }
            if let mountInside {
                return .inPlace(
                    reason:
                        "\(target) holds a mount point, \(mountInside), which a swap would move away with the old tree")
            }
            if geteuid() != 0 {
                if existing.owner != geteuid() {
                    return .inPlace(reason: "\(target) belongs to another user, which a new folder could not keep")
                }
                if existing.group != getegid() && !Self.supplementaryGroups().contains(existing.group) {
                    return .inPlace(
                        reason: "the group of \(target) is not one of yours, so a new folder could not keep it")
                }
            }
        }
        // The nearest folder that exists at or above the parent: where the staging folder (and
        // any missing parent) is created.
        var folder = parentPath(of: resolved)
        while (try? Posix.status(folder, in: nil)) == nil, folder != "/" { folder = parentPath(of: folder) }
        if faccessat(AT_FDCWD, folder, W_OK | X_OK, AT_EACCESS) != 0 {
            return .inPlace(reason: "cannot create a folder in \(folder) (\(Errno(errno)))")
        }
        // Room matters only when the old tree stays while the new one is built: into an empty
        // target, in place needs as much, and a tree built beside is removed when it fails.
        var space = statvfs()
        if clean, preparation.existing != nil, statvfs(folder, &space) == 0 {
            let free = UInt64(space.f_bavail) * UInt64(space.f_frsize)
            if preparation.room.bytes > free {
                return .inPlace(
                    reason:
                        "building it beside needs about \(mebibytes(preparation.room.bytes)) and \(folder) has \(mebibytes(free)) free"
                )
            }
            if space.f_files > 0 && preparation.room.entries > UInt64(space.f_favail) {
                return .inPlace(
                    reason:
                        "building it beside needs \(preparation.room.entries) inodes and the filesystem of \(folder) has \(space.f_favail) free"
                )
            }
        }
        return .beside
    }

    /// A note naming the folders killed restores left beside the target, or nil.
    private func leftovers(_ resolved: String) -> String? {
        guard resolved != "/",
            let names = try? Posix.listDirectory(FileHandle.open(parentPath(of: resolved), O_RDONLY | O_DIRECTORY))
        else { return nil }
        let suffix = Array(("-" + Self.shortName(lastComponent(resolved))).utf8)
        let found = names.filter {
            $0.starts(with: Self.stagingPrefix.utf8) && $0.reversed().starts(with: suffix.reversed())
        }
        guard !found.isEmpty else { return nil }
        let shown = found.prefix(3).map { join(parentPath(of: resolved), String(decoding: $0, as: UTF8.self)) }
        return
            "\(shown.joined(separator: ", "))\(found.count > 3 ? " and \(found.count - 3) more" : ""): left by a restore that was killed (the tree it was building, or the rest of the old one); the target is whole, so remove \(found.count == 1 ? "it" : "them")"
    }

    private static func supplementaryGroups() -> [gid_t] {
        let count = getgroups(0, nil)
        guard count > 0 else { return [] }
        var groups = [gid_t](repeating: 0, count: Int(count))
        let got = getgroups(count, &groups)
        return Array(groups.prefix(Int(max(0, got))))
    }

    fileprivate func unsafe(_ path: String, _ why: String) -> SnapError {
        SnapError(
            .unsafePath,
            "refusing to restore snapshot \(snapshot.shortID): entry '\(path)' is unsafe (\(why)); nothing was written")
    }

    /// Every object of the entry is there before anything is removed or written: a `--clean`
    /// restore that stopped at a missing object would leave the folder half deleted.
    fileprivate func checkObjects(_ entry: ManifestEntry) throws {
        if let missing = try entry.chunks.first(where: { try !repository.store.contains($0) }) {
            throw SnapError(
                .notFound,
                "cannot restore snapshot \(snapshot.shortID): object \(missing.hex) of '\(entry.path)' is missing from the repository; nothing was written; run `snap check`"
            )
        }
    }

    /// Refuses a folder of the target that is the repository or holds it (a bind mount of it, say).
    fileprivate func refuseIfRepository(_ folder: FileHandle, status: FileStatus) throws {
        guard lineage.holdsRepository(FolderIdentity(status)) else { return }
        throw SnapError(
            .invalidInput,
            "restore target \(target) reaches the repository \(repository.path) through \(folder.path) (a bind mount?); restore to a folder outside the repository"
        )
    }

    // MARK: Writing

    /// The storage entries of the manifest, in order, one at a time.
    private func forEachStorageEntry(_ body: (ManifestEntry) throws -> Void) throws {
        try ManifestReader(repository: repository).forEachEntry(snapshot.record.manifest) { entry in
            if entry.kind != .database { try body(entry) }
        }
    }

    /// One pass that writes the tree into `root`, and its statistics.
    private func pass(_ mode: TreePass.Mode, root: FileHandle) throws -> Statistics {
        let pass = TreePass(restorer: self, mode: mode, root: root)
        try forEachStorageEntry { try pass.accept($0) }
        try pass.finish()
        return pass.statistics
    }

    fileprivate static let stagingPrefix = ".snap-restore-"

    /// The target's name as the staging folder's name ends: at most 200 bytes of it, so that
    /// the whole name stays within the 255 a name may have.
    private static func shortName(_ name: String) -> String {
        var bytes = 0
        return String(
            name.unicodeScalars.prefix { scalar in
                bytes += String(scalar).utf8.count
                return bytes <= 200
            })
    }

    /// Why a tree cannot be built beside after all; `stage` then writes in place.
    private struct FallBack: Error { var reason: String }

    /// Creates the staging folder beside the target (and any parent that is missing), 0700, and
    /// checks that the filesystem can swap (or rename without replacing) folders there.
    private func makeStagingFolder(_ preparation: Preparation) throws -> (FileHandle, String, FileHandle) {
        let parentFolder = parentPath(of: preparation.resolved)
        if try Posix.status(parentFolder, in: nil) == nil {
            try Repository.makeDirectories(parentFolder)
            FaultInjection.step()
        }
        let parent = try FileHandle.open(parentFolder, O_RDONLY | O_DIRECTORY)
        let name = Self.stagingPrefix + Posix.randomHex(6) + "-" + Self.shortName(lastComponent(preparation.resolved))
        guard mkdirat(parent.fd, name, 0o700) == 0 else {
            let error = errno
            if [EACCES, EPERM, EROFS].contains(error) {
                throw FallBack(reason: "cannot create a folder in \(parentFolder) (\(Errno(error)))")
            }
            throw SnapError(.io, "cannot create folder \(join(parentFolder, name))", cause: Errno(error))
        }
        FaultInjection.step()
        let root: FileHandle
        do {
            root = try FileHandle.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: parent)
            try probeRenames(in: root, exchange: preparation.existing != nil)
        } catch {
            unlinkat(parent.fd, name, AT_REMOVEDIR)
            throw error
        }
        return (parent, name, root)
    }

    /// Makes two folders in the new (empty) staging folder and swaps them (or renames one
    /// without replacing): some filesystems (NFS, many FUSE ones) cannot, and then the swap at
    /// the end could not either.
    private func probeRenames(in folder: FileHandle, exchange: Bool) throws {
        for name in ["a", "b"] {
            try Posix.makeDirectory(name, in: folder)
            FaultInjection.step()
        }
        let failure = Posix.renameExclusively("a", exchange ? "b" : "c", in: folder, exchange: exchange)
        if failure == nil { FaultInjection.step() }
        for name in ["a", "b", "c"] where unlinkat(folder.fd, name, AT_REMOVEDIR) == 0 { FaultInjection.step() }
        guard let failure else { return }
        if failure == EINVAL || failure == ENOSYS || failure == ENOTSUP {
            throw FallBack(reason: "the filesystem cannot swap folders atomically")
        }
        throw SnapError(.io, "cannot rename in \(folder.path)", cause: Errno(failure))
    }

    /// The target, created when missing, opened to write in place; a folder of the restoring
    /// user's whose mode keeps its owner out (0555, 0000) gets u+rwx until its mode is set last.
    private func openTargetInPlace(_ preparation: Preparation) throws -> FileHandle {
        let resolved = preparation.resolved
        guard let status = try Posix.status(resolved, in: nil) else {
            try Repository.makeDirectories(resolved)
            FaultInjection.step()
            return try FileHandle.open(resolved, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        }
        let parent = try FileHandle.open(parentPath(of: resolved), O_RDONLY | O_DIRECTORY)
        let root = try openFolder(Array(lastComponent(resolved).utf8), status: status, in: parent, enter: true)!
        try refuseIfRepository(root.handle, status: status)
        return root.handle
    }

    /// Opens a folder of the target to work in it. A folder of the restoring user's that keeps
    /// its owner out (a restore of a 0555 or 0000 folder leaves one) gets u+rwx first when
    /// `enter`, as its owner may do anyway: its mode is set again, or it is removed, afterwards.
    /// Other users' folders are never changed. Returns nil when `enter` is false and the folder
    /// cannot be opened (a survey looks, it does not change modes).
    fileprivate func openFolder(_ name: [UInt8], status: FileStatus, in parent: FileHandle, enter: Bool) throws -> (
        handle: FileHandle, mountRoot: Bool
    )? {
        if enter, geteuid() != 0, status.owner == geteuid(), status.mode & 0o700 != 0o700 {
            try Posix.setMode(name, in: parent, status.mode | 0o700)
            FaultInjection.step()
        }
        let handle: FileHandle
        do {
            handle = try FileHandle.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: parent)
        } catch {
            if !enter { return nil }
            throw error
        }
        guard FolderIdentity(try handle.status()) == FolderIdentity(status) else {
            throw SnapError(.io, "\(handle.path) was replaced while it was restored; run the restore again")
        }
        let mountRoot = try handle.isMountRoot() ?? (parent.status().device != status.device)
        return (handle, mountRoot)
    }

    /// Removes an entry of `parent`, a folder with everything in it, depth first, calling
    /// `removed` for each entry; with `dryRun` it only counts. It enters folders as `openFolder`
    /// does, and never crosses into the repository or into another mount: it throws before
    /// removing anything there.
    fileprivate func removeTree(
        _ name: [UInt8], in parent: FileHandle, dryRun: Bool, removed: (FileStatus.Kind) -> Void
    ) throws {
        // The walk starts in `parent`, with `name` as its only entry: the first entry is handled
        // as every other one.
        var stack = FolderStack(
            root: parent, identity: FolderIdentity(try parent.status()), payload: FolderListing(names: [name]))
        while true {
            guard stack.payload.next < stack.payload.names.count else {
                if stack.depth == 0 { return }
                let done = Array(stack.topName)
                _ = try stack.pop()
                if !dryRun {
                    try Posix.unlink(done, in: stack.top!, directory: true)
                    FaultInjection.step()
                }
                removed(.directory)
                continue
            }
            let entry = stack.payload.names[stack.payload.next]
            stack.payload.next += 1
            let folder = stack.top!
            guard let status = try Posix.status(entry, in: folder) else { continue }
            guard status.kind == .directory else {
                if !dryRun {
                    try Posix.unlink(entry, in: folder)
                    FaultInjection.step()
                }
                removed(status.kind)
                continue
            }
            guard let handle = try enterToRemove(entry, status: status, in: folder, dryRun: dryRun) else {
                removed(.directory)
                continue
            }
            let names = try Posix.listDirectory(handle)
            stack.push(entry, handle: handle, identity: FolderIdentity(status), payload: FolderListing(names: names))
        }
    }

    /// A folder to remove, opened; nil in a dry run that cannot look inside.
    private func enterToRemove(_ name: [UInt8], status: FileStatus, in parent: FileHandle, dryRun: Bool) throws
        -> FileHandle?
    {
        func shown() -> String { display(String(decoding: name, as: UTF8.self), in: parent) }  // only for a message
        guard !lineage.holdsRepository(FolderIdentity(status)) else {
            throw SnapError(
                .invalidInput,
                "restore target \(target) reaches the repository \(repository.path) through \(shown()) (a bind mount?); restore to a folder outside the repository"
            )
        }
        guard let folder = try openFolder(name, status: status, in: parent, enter: !dryRun) else { return nil }
        if folder.mountRoot {
            throw SnapError(
                .invalidInput,
                "\(shown()) is a mount point, and the restore would have to remove it with what is mounted there; unmount it, or restore to another folder"
            )
        }
        return folder.handle
    }

    /// Writes a file: into a temporary name then renamed over the old one when `replacing` (a
    /// `--clean` restore in place never leaves a file half old), else straight to its name (in a
    /// new folder, where no one sees it before it is complete).
    fileprivate func writeFile(_ entry: ManifestEntry, name: [UInt8], in parent: FileHandle, replacing: Bool) throws {
        let temporary = replacing ? Array((Self.stagingPrefix + Posix.randomHex(6)).utf8) : name
        let handle = try FileHandle.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, at: parent)
        FaultInjection.step()
        do {
            var written: UInt64 = 0
            for id in entry.chunks {
                let content = try repository.loadObject(id, decompressor: decompressor)
                try handle.writeAll(content)
                written += UInt64(content.count)
            }
            guard written == entry.size else {
                throw SnapError(
                    .corrupt,
                    "\(entry.path): the snapshot's chunks hold \(written) bytes, the manifest says \(entry.size)")
            }
            FaultInjection.step()
            // Owners are not recorded, so the file belongs to whoever restores it: a setuid or
            // setgid bit planted by the folder's user would make, restored as root, a root program.
            try handle.setMode(entry.mode & ~Self.setIDBits)
            try handle.setModificationTime(nanoseconds: entry.mtime)
            FaultInjection.step()
            if replacing {
                try Posix.withCName(temporary) { from in
                    try Posix.withCName(name) { to in
                        guard renameat(parent.fd, from, parent.fd, to) == 0 else {
                            throw SnapError(.io, "cannot write \(entry.path)", cause: Errno(errno))
                        }
                    }
                }
                FaultInjection.step()
            }
        } catch {
            try? Posix.unlink(temporary, in: parent)
            throw error
        }
    }

    /// The folder the staging folder is made in: the target's parent.
    private var stagingParent: String { parentPath(of: preparation!.resolved) }
}

/// One pass over the manifest's storage entries beside a folder tree: a survey of the target
/// (`survey`, nothing written), the build of a new tree (`build`, into an empty folder), or the
/// restore in place (`update`, merged with what the target holds; with `clean` what the
/// snapshot lacks goes).
///
/// A folder's entries come right after it, sorted by name (FORMAT §7.4), so the target's folder
/// can be merged with them as it is listed, sorted alike; its mode and time are set when the
/// manifest shows it complete, after its content (a 0555 folder can be filled first).
private final class TreePass {
    enum Mode: Equatable {
        case survey(examples: Int)
        case build
        case update
    }

    /// A target folder being worked in.
    struct Level {
        /// Its names, sorted, when a `--clean` merge must find what the snapshot lacks.
        var names: [[UInt8]]?
        var next = 0
    }

    private unowned let restorer: Restorer
    let mode: Mode
    private var walk = ManifestWalk()
    /// The target's folders down to the entry's parent, as far as they exist.
    private var stack: FolderStack<Level>?
    private(set) var plan = RestorePlan()
    private(set) var statistics = Restorer.Statistics()
    /// What a tree beside would take: file bytes rounded up to blocks, and entries.
    private(set) var room: (bytes: UInt64, entries: UInt64) = (0, 0)
    /// The first mount point met inside the target.
    private(set) var mountInside: String?
    private let examples: Int

    /// `root`: the target folder (nil in a survey when it is missing, or need not be compared).
    init(restorer: Restorer, mode: Mode, root: FileHandle?) {
        self.restorer = restorer
        self.mode = mode
        if case .survey(let examples) = mode { self.examples = examples } else { self.examples = 0 }
        if let root, let status = try? root.status() {
            stack = FolderStack(root: root, identity: FolderIdentity(status), payload: Level())
        }
    }

    private var merging: Bool { restorer.clean && mode != .build }

    func accept(_ entry: ManifestEntry) throws {
        let placed: ManifestWalk.Placed
        do {
            placed = try walk.next(entry) { folder, depth in try close(folder, depth: depth) }
        } catch let violation as ManifestWalk.Violation {
            throw restorer.unsafe(entry.path, violation.why)
        }
        if case .survey = mode { try restorer.checkObjects(entry) }
        if entry.kind == .file { room.bytes += (entry.size + 4095) / 4096 * 4096 }
        if entry.kind == .directory { room.bytes += 4096 }
        room.entries += 1
        guard let name = placed.name else {
            if merging, let root = stack?.top { stack!.payload.names = try sortedNames(root) }
            return
        }
        // Never a copy of `stack` held across a change to it: it would copy every level.
        guard stack?.depth == placed.depth, let folder = stack?.top else {
            // Below a folder the target does not have (or a survey cannot enter): all new.
            if case .survey = mode { count(\.new, entry) }
            return
        }
        var existing: FileStatus?
        if merging {
            existing = try mergeUpTo(name, in: folder)
        } else if mode == .update {
            existing = try Posix.status(name, in: folder)
        }
        if case .survey = mode {
            try survey(entry, name: name, existing: existing, in: folder)
        } else {
            try write(entry, name: name, existing: existing, in: folder)
        }
    }

    func finish() throws {
        try walk.finish { folder, depth in try close(folder, depth: depth) }
    }

    // MARK: Survey

    private func count(_ changes: WritableKeyPath<RestorePlan, RestorePlan.Changes>, _ entry: ManifestEntry) {
        plan[keyPath: changes].add(Self.kind(entry.kind), entry.path, examples: examples)
        if entry.kind == .file { plan.bytes += entry.size }
    }

    private func survey(_ entry: ManifestEntry, name: [UInt8], existing: FileStatus?, in folder: FileHandle) throws {
        guard let existing else { return count(\.new, entry) }
        guard existing.kind == Self.kind(entry.kind) else {
            count(\.replaced, entry)
            if existing.kind == .directory { try remove(name, in: folder) }
            return
        }
        let same: Bool
        switch entry.kind {
        case .file:
            same =
                existing.size == entry.size && existing.mode == entry.mode & ~Restorer.setIDBits
                && existing.mtimeNanoseconds == entry.mtime
        case .symlink:
            let target = try? Posix.readLink(String(decoding: name, as: UTF8.self), in: folder)
            same = target == entry.target && existing.mtimeNanoseconds == entry.mtime
        case .directory, .database:
            same = existing.mode == entry.mode && existing.mtimeNanoseconds == entry.mtime
        }
        count(same ? \.unchanged : \.replaced, entry)
        guard entry.kind == .directory else { return }
        guard let opened = try restorer.openFolder(name, status: existing, in: folder, enter: false) else {
            plan.notes.append(
                "cannot look inside \(entry.path) in the target (no permission): what the snapshot has in it is counted as new, and nothing in it as removed"
            )
            return
        }
        try restorer.refuseIfRepository(opened.handle, status: existing)
        if opened.mountRoot && mountInside == nil { mountInside = entry.path }
        let names = merging ? try sortedNames(opened.handle) : nil
        stack!.push(name, handle: opened.handle, identity: FolderIdentity(existing), payload: Level(names: names))
    }

    // MARK: Writing

    private func write(_ entry: ManifestEntry, name: [UInt8], existing: FileStatus?, in folder: FileHandle) throws {
        switch entry.kind {
        case .database:
            return
        case .directory:
            var kept: (handle: FileHandle, mountRoot: Bool)?
            if let existing {
                if existing.kind == .directory {
                    kept = try restorer.openFolder(name, status: existing, in: folder, enter: true)
                    try restorer.refuseIfRepository(kept!.handle, status: existing)
                } else {
                    try remove(name, in: folder)
                }
            }
            let handle: FileHandle
            if let kept {
                handle = kept.handle
            } else {
                try Posix.withCName(name) { cName in
                    guard mkdirat(folder.fd, cName, 0o700) == 0 else {
                        throw SnapError(.io, "cannot create folder \(entry.path)", cause: Errno(errno))
                    }
                }
                FaultInjection.step()
                statistics.directories += 1
                handle = try FileHandle.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: folder)
            }
            let names = merging && kept != nil ? try sortedNames(handle) : nil
            stack!.push(
                name, handle: handle, identity: FolderIdentity(try handle.status()), payload: Level(names: names))
        case .file:
            if let existing, existing.kind != .regular { try remove(name, in: folder) }
            try restorer.writeFile(entry, name: name, in: folder, replacing: existing?.kind == .regular)
            statistics.files += 1
            statistics.bytes += entry.size
        case .symlink:
            if let existing { try remove(name, in: folder) }
            let shown = String(decoding: name, as: UTF8.self)
            try Posix.symlink(entry.target ?? "", shown, in: folder)
            FaultInjection.step()
            try Posix.setModificationTime(shown, in: folder, nanoseconds: entry.mtime)
            FaultInjection.step()
            statistics.symlinks += 1
        }
    }

    // MARK: Folders

    /// `--clean`: goes past the names of the target's folder that sort before `name`, which the
    /// snapshot does not have, removing them (or counting them in a survey); returns the status of
    /// `name` when the folder has it.
    private func mergeUpTo(_ name: [UInt8], in folder: FileHandle) throws -> FileStatus? {
        while let names = stack!.payload.names, stack!.payload.next < names.count {
            let candidate = names[stack!.payload.next]
            if candidate == name {
                stack!.payload.next += 1
                return try Posix.status(name, in: folder)
            }
            guard candidate.lexicographicallyPrecedes(name) else { return nil }
            stack!.payload.next += 1
            try remove(candidate, in: folder)
        }
        return nil
    }

    /// An entry the snapshot does not have, or not of this kind: removed (before the snapshot's
    /// is written), or in a survey counted.
    private func remove(_ name: [UInt8], in folder: FileHandle) throws {
        guard case .survey = mode else {
            return try restorer.removeTree(name, in: folder, dryRun: false) { _ in statistics.removed += 1 }
        }
        let path = String(decoding: stack!.path(of: name), as: UTF8.self)
        if plan.removed.examples.count < examples { plan.removed.examples.append(path) }
        try restorer.removeTree(name, in: folder, dryRun: true) { kind in
            plan.removed.add(kind, path, examples: 0)
        }
    }

    /// The manifest shows the folder at `depth` complete: with `clean`, what the target's folder
    /// holds past the snapshot's last name goes; then the folder's mode and time are set, after
    /// its content.
    private func close(_ folder: ManifestWalk.Folder, depth: Int) throws {
        guard stack?.depth == depth, let handle = stack?.top else { return }
        if merging {
            while let names = stack!.payload.names, stack!.payload.next < names.count {
                let name = names[stack!.payload.next]
                stack!.payload.next += 1
                try remove(name, in: handle)
            }
        }
        let closed = depth == 0 ? handle : try stack!.pop().handle!
        guard mode == .build || mode == .update else { return }
        try closed.setMode(folder.mode)
        FaultInjection.step()
        try closed.setModificationTime(nanoseconds: folder.mtime)
        FaultInjection.step()
    }

    private func sortedNames(_ folder: FileHandle) throws -> [[UInt8]] {
        try Posix.listDirectory(folder).sorted { $0.lexicographicallyPrecedes($1) }
    }

    private static func kind(_ kind: ManifestEntry.Kind) -> FileStatus.Kind {
        switch kind {
        case .directory: .directory
        case .file, .database: .regular
        case .symlink: .symlink
        }
    }
}

/// Follows a manifest's storage entries one at a time, checking that they form a tree in the
/// order FORMAT §7.4 prescribes, with one path in memory: the `.` folder first; every path plain
/// and relative; each entry right after its folder's earlier entries, names of a folder sorted by
/// their bytes and none twice. Checked so, every entry's parent is a folder entry met before it,
/// nothing lies below a symlink or file, and no path appears twice, without a table of all paths
/// (a tree ten thousand folders deep has hundreds of megabytes of them).
struct ManifestWalk {
    struct Violation: Error { var why: String }

    /// An open folder: the entry's mode and time (set once the folder is complete) and the
    /// last name met in it.
    struct Folder {
        let mode: UInt32
        let mtime: Int64
        fileprivate let nameStart: Int
        fileprivate var lastChild: [UInt8]?
        fileprivate var lastKind: ManifestEntry.Kind?
    }

    /// Where an entry goes: its name (nil for the root) and the depth of its folder (0: the root).
    struct Placed {
        var name: [UInt8]?
        var depth: Int
    }

    private var folders: [Folder] = []
    /// The innermost open folder's path; empty at the root.
    private var path: [UInt8] = []

    /// Takes the next storage entry. First calls `close` with each open folder the entry shows
    /// complete, deepest first, with its depth; then checks the entry.
    mutating func next(_ entry: ManifestEntry, close: (Folder, Int) throws -> Void) throws -> Placed {
        let slash = UInt8(ascii: "/")
        if entry.path == "." {
            guard entry.kind == .directory, folders.isEmpty else {
                throw Violation(why: "the storage root is not a single folder entry")
            }
            folders.append(Folder(mode: entry.mode, mtime: entry.mtime, nameStart: 0))
            return Placed(name: nil, depth: 0)
        }
        guard !folders.isEmpty else { throw Violation(why: "it comes before the storage root") }
        // Only the name is checked here: the rest must be the path of the open folder, whose
        // names were checked as they came. Work per entry stays linear in its path (memcmp for
        // the whole of it: the tests run unoptimized code, where a loop per byte is slow).
        let bytes = Array(entry.path.utf8)
        let cut = bytes.lastIndex(of: slash) ?? -1
        let parentCount = max(0, cut)
        let name = Array(bytes[(cut + 1)...])
        guard Self.isPlainName(name) else { throw Violation(why: "the path is not a plain relative path") }
        // Close the folders the entry is not in, up to its own.
        while !(path.count == parentCount && Self.samePrefix(path, bytes, parentCount)) {
            if path.count < parentCount && (path.isEmpty || bytes[path.count] == slash)
                && Self.samePrefix(path, bytes, path.count)
            {
                guard bytes.split(separator: slash, omittingEmptySubsequences: false).allSatisfy(Self.isPlainName)
                else { throw Violation(why: "the path is not a plain relative path") }
                // Its folder should be open here, and is not: below a file or symlink, missing,
                // or out of order.
                let top = folders[folders.count - 1]
                let nextStart = path.isEmpty ? 0 : path.count + 1
                let nextEnd = bytes[nextStart..<parentCount].firstIndex(of: slash) ?? parentCount
                if top.lastChild.map({ $0[...] == bytes[nextStart..<nextEnd] }) == true, let kind = top.lastKind,
                    kind != .directory
                {
                    let above = String(decoding: bytes[..<nextEnd], as: UTF8.self)
                    throw Violation(why: "it lies below the \(kind == .symlink ? "symlink" : kind.rawValue) \(above)")
                }
                throw Violation(why: "its folder is not in the snapshot right before it")
            }
            let closing = folders.removeLast()
            path.removeSubrange(max(0, closing.nameStart - 1)...)
            try close(closing, folders.count)
        }
        let depth = folders.count - 1
        if let last = folders[depth].lastChild {
            if last == name { throw Violation(why: "the path appears twice") }
            if !last.lexicographicallyPrecedes(name) {
                throw Violation(why: "it is out of order (a folder's entries are sorted by the bytes of their names)")
            }
        }
        folders[depth].lastChild = name
        folders[depth].lastKind = entry.kind
        // symlinkat would cut the target at a NUL, making a link other than the recorded one.
        if entry.kind == .symlink, entry.target?.utf8.contains(0) ?? true {
            throw Violation(why: "its link target is missing or holds a NUL byte")
        }
        if entry.kind == .directory {
            if !path.isEmpty { path.append(slash) }
            folders.append(Folder(mode: entry.mode, mtime: entry.mtime, nameStart: path.count))
            path.append(contentsOf: name)
        }
        return Placed(name: name, depth: depth)
    }

    /// A component as the kernel splits paths at `/` bytes: not empty, `.` or `..`, and
    /// without a NUL (or a `/`).
    private static func isPlainName(_ name: some Collection<UInt8>) -> Bool {
        !name.isEmpty && !name.contains(0) && !name.contains(UInt8(ascii: "/"))
            && !name.elementsEqual([0x2E]) && !name.elementsEqual([0x2E, 0x2E])
    }

    /// Whether the first `count` bytes of `a` and `b` are the same.
    private static func samePrefix(_ a: [UInt8], _ b: [UInt8], _ count: Int) -> Bool {
        count == 0
            || a.withUnsafeBytes { a in b.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, count) == 0 } }
    }

    /// Closes every folder still open, the root last; throws when there was no root.
    mutating func finish(close: (Folder, Int) throws -> Void) throws {
        while let folder = folders.popLast() { try close(folder, folders.count) }
    }
}

private func parentPath(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

private func lastComponent(_ path: String) -> String {
    path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
}

private func reason(_ error: any Error) -> String {
    if let error = error as? SnapError, let cause = error.cause { return "\(cause)" }
    return "\(error)"
}

private func mebibytes(_ bytes: UInt64) -> String {
    "\((bytes + (1 << 20) - 1) >> 20) MiB"
}
