import CLinux

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// Thin, safe wrappers over the POSIX calls the store, snapshot and restore paths need. Everything
// here reports failures as `SnapError(.io, ...)` naming the path, so callers never see a bare errno.

/// An owned file descriptor, closed when the value is released.
final class FileHandle: @unchecked Sendable {
    private(set) var fd: Int32
    private let location: Location

    /// Where a handle was opened: a name and the location of the folder it was opened in. Each
    /// open adds one node, whatever the depth, and the path is spelled out only for a message:
    /// joining it at every open made a walk of a deep tree quadratic.
    private final class Location: Sendable {
        let parent: Location?
        let name: String
        init(parent: Location?, name: String) { (self.parent, self.name) = (parent, name) }
    }

    /// The path the handle was opened by, for messages.
    var path: String {
        var names: [String] = []
        var current: Location? = location
        while let node = current {
            names.append(node.name)
            current = node.parent
        }
        return names.reversed().reduce("") { join($0, $1) }
    }

    init(fd: Int32, path: String) {
        self.fd = fd
        self.location = Location(parent: nil, name: path)
    }

    private init(fd: Int32, name: String, in dir: FileHandle?) {
        self.fd = fd
        self.location = Location(parent: dir?.location, name: name)
    }

    private init(fd: Int32, location: Location) {
        self.fd = fd
        self.location = location
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// Closes now and reports what `close` reports: some filesystems (NFS) report a failed write
    /// only there.
    func close() throws {
        let result = Glibc.close(fd)
        fd = -1
        guard result == 0 else { throw SnapError(.io, "cannot write \(path)", cause: Errno(errno)) }
    }

    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600, at dir: FileHandle? = nil)
        throws -> FileHandle
    {
        try path.withCString { try open($0, shown: path, flags, mode: mode, at: dir) }
    }

    /// Opens a name as the folder lists it (bytes, not necessarily UTF-8).
    static func open(_ name: [UInt8], _ flags: Int32, mode: mode_t = 0o600, at dir: FileHandle) throws -> FileHandle {
        try Posix.withCName(name) {
            try open($0, shown: String(decoding: name, as: UTF8.self), flags, mode: mode, at: dir)
        }
    }

    private static func open(
        _ path: UnsafePointer<CChar>, shown: String, _ flags: Int32, mode: mode_t, at dir: FileHandle?
    ) throws -> FileHandle {
        let fd = retryOnInterrupt { openat(dir?.fd ?? AT_FDCWD, path, flags | O_CLOEXEC, mode) }
        guard fd >= 0 else {
            throw SnapError(.io, "cannot open \(display(shown, in: dir))", cause: Errno(errno))
        }
        return FileHandle(fd: fd, name: shown, in: dir)
    }

    /// The folder this one was opened in, opened again through `..`: no path is formed however
    /// deep the folder lies. The caller checks that it is the folder it expects (device and inode).
    func openParentFolder() throws -> FileHandle {
        let fd = retryOnInterrupt { openat(self.fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0 else { throw SnapError(.io, "cannot open the folder above \(path)", cause: Errno(errno)) }
        return FileHandle(fd: fd, location: location.parent ?? Location(parent: location, name: ".."))
    }

    /// Sets the open file's or folder's mode: no symlink can redirect it, unlike a chmod by name.
    func setMode(_ mode: UInt32) throws {
        guard fchmod(fd, mode_t(mode)) == 0 else {
            throw SnapError(.io, "cannot set the mode of \(path)", cause: Errno(errno))
        }
    }

    /// Sets the open file's or folder's mtime (and atime to the same value).
    func setModificationTime(nanoseconds: Int64) throws {
        var times = [timespec](repeating: timespec(nanoseconds: nanoseconds), count: 2)
        guard futimens(fd, &times) == 0 else {
            throw SnapError(.io, "cannot set the time of \(path)", cause: Errno(errno))
        }
    }

    /// Reads up to `buffer.count` bytes; 0 means end of file.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = retryOnInterrupt { Glibc.read(fd, buffer.baseAddress, buffer.count) }
        guard n >= 0 else { throw SnapError(.io, "cannot read \(path)", cause: Errno(errno)) }
        return n
    }

    func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = retryOnInterrupt { write(fd, bytes.baseAddress! + offset, bytes.count - offset) }
            guard n > 0 else {
                throw SnapError(.io, "cannot write \(path)", cause: Errno(n < 0 ? errno : EIO))
            }
            offset += n
        }
    }

    func writeAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll($0) }
    }

    /// Reads the whole file; only for small files (records, config).
    func readAll() throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try read(into: $0) }
            if n == 0 { return result }
            result.append(contentsOf: buffer[0..<n])
        }
    }

    func sync() throws {
        guard fsync(fd) == 0 else { throw SnapError(.io, "cannot fsync \(path)", cause: Errno(errno)) }
    }

    /// `fdatasync`: the file's bytes and what is needed to read them back (its size), not its times.
    func syncData() throws {
        guard fdatasync(fd) == 0 else { throw SnapError(.io, "cannot fsync \(path)", cause: Errno(errno)) }
    }

    func status() throws -> FileStatus {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SnapError(.io, "cannot stat \(path)", cause: Errno(errno)) }
        return FileStatus(st)
    }

    /// Whether this folder is the root of a mount (a mount point, a bind mount included); nil
    /// when the kernel does not say (before Linux 5.8).
    func isMountRoot() -> Bool? {
        switch snap_is_mount_root(fd) {
        case 1: true
        case 0: false
        default: nil
        }
    }
}

/// The parts of `stat` that snap records.
struct FileStatus {
    enum Kind { case regular, directory, symlink, other }
    var kind: Kind
    var mode: UInt32  // permission bits, including setuid/setgid/sticky
    var size: UInt64
    var mtimeNanoseconds: Int64
    var ctimeNanoseconds: Int64
    var inode: UInt64
    var device: UInt64
    var owner: uid_t
    var group: gid_t

    init(_ st: stat) {
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        default: kind = .other
        }
        mode = UInt32(st.st_mode & 0o7777)
        size = UInt64(max(0, st.st_size))
        mtimeNanoseconds = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        ctimeNanoseconds = Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
        inode = UInt64(st.st_ino)
        device = UInt64(st.st_dev)
        owner = st.st_uid
        group = st.st_gid
    }
}

enum Posix {
    /// `lstat` relative to a directory; nil when the entry does not exist.
    static func status(_ name: String, in dir: FileHandle?) throws -> FileStatus? {
        try name.withCString { try status($0, shown: name, in: dir) }
    }

    /// `lstat` of a name as the folder lists it (bytes, not necessarily UTF-8).
    static func status(_ name: [UInt8], in dir: FileHandle) throws -> FileStatus? {
        try withCName(name) { try status($0, shown: String(decoding: name, as: UTF8.self), in: dir) }
    }

    private static func status(_ name: UnsafePointer<CChar>, shown: String, in dir: FileHandle?) throws -> FileStatus? {
        var st = stat()
        guard fstatat(dir?.fd ?? AT_FDCWD, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { return nil }
            throw SnapError(.io, "cannot stat \(display(shown, in: dir))", cause: Errno(errno))
        }
        return FileStatus(st)
    }

    /// The absolute path `path` names, symlinks resolved as far as it exists (a missing tail is
    /// appended as written); nil when not even the working folder resolves, or when the missing
    /// tail holds `.` or `..`, which only the filesystem could resolve once it exists.
    static func resolvedPath(_ path: String) -> String? {
        var head = path.isEmpty ? "." : path
        var tail: [Substring] = []
        while true {
            if let real = realpath(head, nil) {
                defer { free(real) }
                let base = String(cString: real)
                return tail.reversed().reduce(base) { $0.hasSuffix("/") ? $0 + $1 : $0 + "/" + $1 }
            }
            guard errno == ENOENT else { return nil }
            guard let slash = head.lastIndex(of: "/") else {
                if head == "." || head == ".." { return nil }
                tail.append(Substring(head))
                head = "."
                continue
            }
            let last = head[head.index(after: slash)...]
            if last == "." || last == ".." { return nil }
            if !last.isEmpty { tail.append(last) }
            head = slash == head.startIndex ? "/" : String(head[..<slash])
        }
    }

    /// Calls `body` with `name` as a C string; for names a String cannot hold exactly.
    static func withCName<T>(_ name: [UInt8], _ body: (UnsafePointer<CChar>) throws -> T) rethrows -> T {
        try (name + [0]).withUnsafeBufferPointer { bytes in
            try bytes.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) }
        }
    }

    static func makeDirectory(_ name: String, in dir: FileHandle?, mode: mode_t = 0o700) throws {
        guard mkdirat(dir?.fd ?? AT_FDCWD, name, mode) == 0 else {
            throw SnapError(.io, "cannot create folder \(display(name, in: dir))", cause: Errno(errno))
        }
    }

    /// Creates the folder unless it exists already as a folder.
    static func ensureDirectory(_ name: String, in dir: FileHandle?, mode: mode_t = 0o700) throws {
        if mkdirat(dir?.fd ?? AT_FDCWD, name, mode) == 0 || errno == EEXIST { return }
        throw SnapError(.io, "cannot create folder \(display(name, in: dir))", cause: Errno(errno))
    }

    static func readLink(_ name: String, in dir: FileHandle?) throws -> String {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = buffer.withUnsafeMutableBufferPointer {
            $0.baseAddress!.withMemoryRebound(to: CChar.self, capacity: $0.count) {
                readlinkat(dir?.fd ?? AT_FDCWD, name, $0, Int(PATH_MAX))
            }
        }
        guard n >= 0 else { throw SnapError(.io, "cannot read link \(display(name, in: dir))", cause: Errno(errno)) }
        guard let target = String(validating: buffer[0..<n], as: UTF8.self) else {
            throw SnapError(.invalidInput, "link target of \(display(name, in: dir)) is not valid UTF-8")
        }
        return target
    }

    static func symlink(_ target: String, _ name: String, in dir: FileHandle?) throws {
        guard symlinkat(target, dir?.fd ?? AT_FDCWD, name) == 0 else {
            throw SnapError(.io, "cannot create link \(display(name, in: dir))", cause: Errno(errno))
        }
    }

    static func rename(_ from: String, _ to: String, in dir: FileHandle?) throws {
        guard renameat(dir?.fd ?? AT_FDCWD, from, dir?.fd ?? AT_FDCWD, to) == 0 else {
            throw SnapError(.io, "cannot rename \(display(from, in: dir)) to \(to)", cause: Errno(errno))
        }
    }

    /// Renames `from` to `to` in the same folder, atomically swapping the two when `exchange`
    /// (both must exist), else failing with EEXIST when `to` exists. Returns the errno on failure:
    /// EINVAL where the filesystem cannot do it.
    static func renameExclusively(_ from: String, _ to: String, in dir: FileHandle, exchange: Bool) -> Int32? {
        let flags = UInt32(exchange ? SNAP_RENAME_EXCHANGE : SNAP_RENAME_NOREPLACE)
        return renameat2(dir.fd, from, dir.fd, to, flags) == 0 ? nil : errno
    }

    /// Sets the permission bits of a name in a folder without following a symlink (glibc goes
    /// through an O_PATH descriptor; a symlink fails with EOPNOTSUPP).
    static func setMode(_ name: [UInt8], in dir: FileHandle, _ mode: UInt32) throws {
        try withCName(name) { cName in
            guard fchmodat(dir.fd, cName, mode_t(mode), AT_SYMLINK_NOFOLLOW) == 0 else {
                let shown = String(decoding: name, as: UTF8.self)
                throw SnapError(.io, "cannot set the mode of \(display(shown, in: dir))", cause: Errno(errno))
            }
        }
    }

    static func unlink(_ name: String, in dir: FileHandle?, directory: Bool = false) throws {
        try name.withCString { try unlink($0, shown: name, in: dir, directory: directory) }
    }

    /// `unlinkat` of a name as the folder lists it (bytes, not necessarily UTF-8).
    static func unlink(_ name: [UInt8], in dir: FileHandle, directory: Bool = false) throws {
        try withCName(name) {
            try unlink($0, shown: String(decoding: name, as: UTF8.self), in: dir, directory: directory)
        }
    }

    private static func unlink(_ name: UnsafePointer<CChar>, shown: String, in dir: FileHandle?, directory: Bool) throws
    {
        guard unlinkat(dir?.fd ?? AT_FDCWD, name, directory ? AT_REMOVEDIR : 0) == 0 else {
            throw SnapError(.io, "cannot remove \(display(shown, in: dir))", cause: Errno(errno))
        }
    }

    /// Sets mtime (and atime to the same value) without following a symlink.
    static func setModificationTime(_ name: String, in dir: FileHandle?, nanoseconds: Int64) throws {
        var times = [timespec](repeating: timespec(nanoseconds: nanoseconds), count: 2)
        guard utimensat(dir?.fd ?? AT_FDCWD, name, &times, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw SnapError(.io, "cannot set the time of \(display(name, in: dir))", cause: Errno(errno))
        }
    }

    /// The names in a folder (without `.` and `..`), as raw bytes: a name need not be UTF-8.
    static func listDirectory(_ dir: FileHandle) throws -> [[UInt8]] {
        let copy = dup(dir.fd)
        guard copy >= 0, let stream = fdopendir(copy) else {
            if copy >= 0 { close(copy) }
            throw SnapError(.io, "cannot list \(dir.path)", cause: Errno(errno))
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var names: [[UInt8]] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw SnapError(.io, "cannot list \(dir.path)", cause: Errno(errno)) }
                return names
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw -> [UInt8] in
                let bytes = raw.bindMemory(to: UInt8.self)
                let length = bytes.firstIndex(of: 0) ?? bytes.count
                return Array(bytes[0..<length])
            }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            names.append(name)
        }
    }

    /// The login name of `uid`, or `uid N` when the user database has none.
    static func userName(_ uid: uid_t) -> String {
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &found) == 0, found != nil, let name = entry.pw_name
        else { return "uid \(uid)" }
        return String(cString: name)
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown" }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Random bytes from the kernel (getrandom), as hex: names of temporary files and of a new
    /// repository. Not OpenSSL's RAND, whose per-thread state every worker would then carry.
    static func randomHex(_ byteCount: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(byteCount + 7)
        while bytes.count < byteCount {  // one getrandom call per 8 bytes
            withUnsafeBytes(of: generator.next()) { bytes.append(contentsOf: $0) }
        }
        return hexString(Array(bytes.prefix(byteCount)))
    }
}

extension timespec {
    init(nanoseconds: Int64) {
        let (seconds, remainder) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
        // Floor division so times before 1970 keep a non-negative nanosecond field.
        if remainder < 0 {
            self.init(tv_sec: Int(seconds - 1), tv_nsec: Int(remainder + 1_000_000_000))
        } else {
            self.init(tv_sec: Int(seconds), tv_nsec: Int(remainder))
        }
    }
}

@inline(__always)
func retryOnInterrupt<T: BinaryInteger>(_ body: () -> T) -> T {
    while true {
        let result = body()
        if result < 0 && errno == EINTR { continue }
        return result
    }
}

func join(_ base: String, _ name: String) -> String {
    if base.isEmpty || name.hasPrefix("/") { return name }
    return base.hasSuffix("/") ? base + name : base + "/" + name
}

func display(_ name: String, in dir: FileHandle?) -> String {
    dir.map { join($0.path, name) } ?? name
}

private let hexDigits = Array("0123456789abcdef".utf8)

func hexString<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(hexDigits[Int(byte >> 4)])
        out.append(hexDigits[Int(byte & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}
