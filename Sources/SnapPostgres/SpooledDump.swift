import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The temporary copy of a dump for a parallel restore, open for as long as the value lives.
///
/// Where /proc lets pg_restore open the copy through this process's descriptor, its name is
/// removed at once: however snap ends (killed, even), the copy, a whole database, goes with it.
/// Elsewhere it keeps its private name (0600) until the value is released.
final class SpooledDump {
    private let fd: Int32
    /// What pg_restore opens: /proc/PID/fd/N, or the file's name.
    let path: String
    private let name: String?

    init(fd: Int32, name: String) {
        self.fd = fd
        let handle = "/proc/\(getpid())/fd/\(fd)"
        if access(handle, R_OK) == 0 && unlink(name) == 0 {
            path = handle
            self.name = nil
        } else {
            path = name
            self.name = name
        }
    }

    deinit {
        if let name { unlink(name) }
        close(fd)
    }
}
