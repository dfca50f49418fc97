import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A test hook for crash-safety tests: with `SNAP_TEST_KILL_AFTER=N` in the environment, the
/// process kills itself with SIGKILL at the N-th repository mutation (an object written, published
/// or deleted; a record written or removed), exactly as a power cut or `kill -9` would stop it
/// there. Without the variable it costs one atomic increment per mutation.
enum FaultInjection {
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

    static func step() {
        guard let limit else { return }
        if counter.next() >= limit { kill(getpid(), SIGKILL) }
    }
}
