#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A folder by device and inode: what stays the same however the folder is reached (a symlink,
/// a bind mount) and whatever it is renamed to.
struct FolderIdentity: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
    init(_ status: FileStatus) { (device, inode) = (status.device, status.inode) }
}

/// The folders from a root down to the one a depth-first walk is working in, each with its
/// name, device and inode, and the walker's own state for it (`Payload`).
///
/// Depth is limited only by the kernel. Every folder is opened relative to its parent, so no
/// path is ever formed (no PATH_MAX), and at most `openLimit` descriptors are held whatever the
/// depth: the root's and those of the deepest levels. When the walk climbs back to a level whose
/// descriptor was closed, it opens `..` of the level it leaves and checks device and inode
/// against those it recorded: one `openat` per level climbed, so a walk stays linear in the tree.
/// A folder moved away meanwhile fails that check; the level is then opened name by name from the
/// nearest level still open, each checked again, and when that fails too the walk gets an error
/// instead of working in another folder.
struct FolderStack<Payload> {
    struct Level {
        /// Nil once closed to stay within `openLimit`; the top level is always open.
        fileprivate(set) var handle: FileHandle?
        let identity: FolderIdentity
        /// Where the level's name starts in `path`.
        fileprivate let nameStart: Int
        var payload: Payload
    }

    /// Descriptors a stack holds at most. A few stacks may be alive at once (a restore removing
    /// a folder while it walks the target); the process limit is usually 1024 or more.
    static var openLimit: Int { 32 }

    private(set) var levels: [Level]
    /// The top folder's path relative to the root: the names joined by `/`; empty at the root.
    private(set) var path: [UInt8] = []
    /// The identities of all levels, for `holds`.
    private var identities: Set<FolderIdentity>

    init(root: FileHandle, identity: FolderIdentity, payload: Payload) {
        levels = [Level(handle: root, identity: identity, nameStart: 0, payload: payload)]
        identities = [identity]
    }

    /// 0 at the root.
    var depth: Int { levels.count - 1 }

    /// The folder being worked in: nil only after a failed `pop`, until the next one.
    var top: FileHandle? { levels[levels.count - 1].handle }

    /// The walker's state for the top folder.
    var payload: Payload {
        get { levels[levels.count - 1].payload }
        _modify { yield &levels[levels.count - 1].payload }
    }

    /// Whether a folder with this identity is the top folder or one above it: a bind mount of
    /// an ancestor inside the tree would otherwise be walked without end.
    func holds(_ identity: FolderIdentity) -> Bool { identities.contains(identity) }

    /// The path of an entry of the top folder, relative to the root.
    func path(of name: some Collection<UInt8>) -> [UInt8] {
        path.isEmpty ? Array(name) : path + [UInt8(ascii: "/")] + name
    }

    /// The top folder's own name; empty at the root.
    var topName: ArraySlice<UInt8> { path[levels[levels.count - 1].nameStart...] }

    /// Enters `name`, a folder of the top folder, open as `handle`.
    mutating func push(_ name: [UInt8], handle: FileHandle, identity: FolderIdentity, payload: Payload) {
        if !path.isEmpty { path.append(UInt8(ascii: "/")) }
        levels.append(Level(handle: handle, identity: identity, nameStart: path.count, payload: payload))
        path.append(contentsOf: name)
        identities.insert(identity)
        // Each push closes the level `openLimit` above, so only the root and the deepest levels
        // are open, whatever the depth.
        let far = levels.count - Self.openLimit
        if far >= 1 { levels[far].handle = nil }
    }

    /// Leaves the top folder and returns it, its handle still open (set its mode and time
    /// through it: the folder above is open again before, so a mode that keeps its owner out
    /// cannot stop the climb). Throws when the folder above cannot be opened again as the same
    /// folder; the stack has then left the level all the same, and its new top is nil.
    mutating func pop() throws -> Level {
        precondition(levels.count > 1, "the root is never popped")
        let leaving = levels.removeLast()
        identities.remove(leaving.identity)
        path.removeSubrange(max(0, leaving.nameStart - 1)...)
        let index = levels.count - 1
        if levels[index].handle == nil { levels[index].handle = try reopen(index, from: leaving.handle) }
        return leaving
    }

    /// Opens level `index` again: `..` of the level below it, else name by name from the nearest
    /// level still open; either way it must have the identity recorded.
    private func reopen(_ index: Int, from child: FileHandle?) throws -> FileHandle {
        let wanted = levels[index].identity
        if let parent = try? child?.openParentFolder(), (try? parent.status()).map(FolderIdentity.init) == wanted {
            return parent
        }
        var start = index - 1
        while levels[start].handle == nil { start -= 1 }  // the root is always open
        var current = levels[start].handle!
        for level in (start + 1)...index {
            let end = level == index ? path.count : levels[level + 1].nameStart - 1
            let name = Array(path[levels[level].nameStart..<end])
            guard let next = try? FileHandle.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: current),
                (try? next.status()).map(FolderIdentity.init) == levels[level].identity
            else {
                throw SnapError(
                    .io,
                    "\(join(levels[0].handle!.path, String(decoding: path[..<end], as: UTF8.self))) was moved or replaced while snap worked in it"
                )
            }
            current = next
        }
        return current
    }
}

/// A folder's names, as a walk reads them one after the other.
struct FolderListing {
    var names: [[UInt8]]
    var next = 0
}

/// The repository's folder and every folder above it, by device and inode: a snapshot must not
/// read the repository into itself, and a restore must never write into it or remove it, however
/// it is reached (a symlink, a bind mount).
struct RepositoryLineage {
    /// The repository's own folder; nil when it cannot be opened.
    let repository: FolderIdentity?
    /// A folder's names, as a walk reads them one after the other.
    struct FolderListing {
        var names: [[UInt8]]
        var next = 0
    }

    /// The repository's folder and every folder above it, up to `/`.
    let folders: Set<FolderIdentity>

    init(_ path: String) {
        var folders = Set<FolderIdentity>()
        var repository: FolderIdentity?
        if var current = try? FileHandle.open(path, O_RDONLY | O_DIRECTORY) {
            repository = (try? current.status()).map(FolderIdentity.init)
            while let status = try? current.status(), folders.insert(FolderIdentity(status)).inserted,
                let parent = try? current.openParentFolder()
            {
                current = parent
            }
        }
        self.repository = repository
        self.folders = folders
    }

    /// Whether the folder is the repository or holds it.
    func holdsRepository(_ identity: FolderIdentity) -> Bool { folders.contains(identity) }
}
