import Synchronization
import Testing

@testable import SnapCore

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct ParallelSyncTests {
    /// What the calls saw, shared by the threads.
    private final class Calls: Sendable {
        let indices = Mutex<[Int]>([])
        let threads = Mutex<Set<UInt>>([])
    }

    @Test func everyIndexRunsOnceOnSeveralThreads() throws {
        let calls = Calls()
        try ParallelSync.forEach(1000) { index in
            usleep(100)  // long enough for the threads to overlap
            calls.indices.withLock { $0.append(index) }
            calls.threads.withLock { _ = $0.insert(UInt(pthread_self())) }
        }
        #expect(calls.indices.withLock { $0.sorted() } == Array(0..<1000))
        #expect(calls.threads.withLock { $0.count } > 1)
        try ParallelSync.forEach(0) { _ in Issue.record("called for an empty range") }
    }

    @Test func theFirstErrorIsThrownAndStopsNewWork() throws {
        struct Failed: Error {}
        let calls = Calls()
        #expect(throws: Failed.self) {
            try ParallelSync.forEach(100_000) { index in
                calls.indices.withLock { $0.append(index) }
                if index == 10 { throw Failed() }
            }
        }
        #expect(calls.indices.withLock { $0.count } < 100_000)
    }
}
