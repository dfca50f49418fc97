import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Test hooks for crash-safety tests.
///
/// With `SNAP_TEST_KILL_AFTER=N` in the environment, the process kills itself with SIGKILL at the
/// N-th mutation (in a repository: an object written, published or deleted, a record written or
/// removed; in a storage restore: an entry of the target or of the tree built beside it created,
/// written, renamed, swapped or removed, or its mode or time set), exactly as a power cut or
/// `kill -9` would stop it there. Without the variable it
/// costs one atomic increment per mutation.
///
/// With `SNAP_TEST_HASH_AT_EXIT=1`, `startHashingAtExit()` leaves threads hashing, and others
/// ending, while the process exits: the race that once made a finished restore die of SIGSEGV in
/// OpenSSL's exit handler.
public enum FaultInjection {
    private static let limit: Int? = ProcessInfo.processInfo.environment["SNAP_TEST_KILL_AFTER"].flatMap(Int.init)
    private static let counter = Counter()

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func next() -> Int {
            lock.withLock {
                value += 1
                return value
            }
        }
    }

    public static func step() {
        guard let limit else { return }
        if counter.next() >= limit { kill(getpid(), SIGKILL) }
    }
}

extension FaultInjection {
    /// Starts the threads of `SNAP_TEST_HASH_AT_EXIT`; without the variable it does nothing.
    public static func startHashingAtExit() {
        guard ProcessInfo.processInfo.environment["SNAP_TEST_HASH_AT_EXIT"] == "1" else { return }
        let bytes = [UInt8](repeating: 0x5A, count: 4096)
        for _ in 0..<2 {
            Thread { while true { _ = ObjectID(hashing: bytes) } }.start()
        }
        for _ in 0..<16 {
            Thread {
                _ = ObjectID(hashing: bytes)
                _ = Posix.randomHex(6)
            }.start()
        }
    }
}
