import CLinux
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Keeps a child that streams into us (pg_dump) and the thread reading it on one CPU while the
/// stream lasts.
///
/// pg_dump writes its output 4 KiB at a time, and the reader wakes for most of those writes. With
/// the two on different CPUs every wake-up is a cross-CPU interrupt, which on a virtual machine
/// costs more than chunking and hashing the bytes, and the pair takes CPU time from the server
/// process that produces the data, the dump's real bottleneck. On one CPU the pair switches
/// locally and leaves the other CPUs to the server and the compressors (docs/BENCHMARKS.md has
/// the figures). Nothing is pinned when the thread may use only one CPU, or when
/// `SNAP_NO_CPU_PAIRING` is set to anything but empty or 0.
final class CPUPairing {
    /// glibc's cpu_set_t: 1024 bits.
    private static let maskBytes = 128
    private let thread: Int32
    private var saved: [UInt8]?

    /// Pins the calling thread and `child` to the CPU the thread runs on now; nil when that is
    /// not worth doing or not allowed.
    init?(child: pid_t, environment: [String: String]) {
        if let off = environment["SNAP_NO_CPU_PAIRING"], !off.isEmpty, off != "0" { return nil }
        var allowed = [UInt8](repeating: 0, count: Self.maskBytes)
        guard sched_getaffinity(0, UInt(Self.maskBytes), &allowed) == 0,
            allowed.reduce(0, { $0 + $1.nonzeroBitCount }) >= 2
        else { return nil }
        let cpu = Int(sched_getcpu())
        guard cpu >= 0, cpu < Self.maskBytes * 8 else { return nil }
        var single = [UInt8](repeating: 0, count: Self.maskBytes)
        single[cpu / 8] = 1 << UInt8(cpu % 8)
        thread = gettid()
        guard sched_setaffinity(thread, UInt(Self.maskBytes), single) == 0 else { return nil }
        // A child that has already exited cannot be pinned; the dump's end reports it.
        _ = sched_setaffinity(child, UInt(Self.maskBytes), single)
        saved = allowed
    }

    /// Gives the thread back the CPUs it had. Safe to call twice.
    func end() {
        guard let saved else { return }
        _ = sched_setaffinity(thread, UInt(Self.maskBytes), saved)
        self.saved = nil
    }

    deinit { end() }
}
