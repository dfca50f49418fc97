import Foundation

/// Work run on a thread of its own (a plain thread: it may block in file and database calls),
/// joined with `wait()`. The thread's stack is 16 MiB, enough for deep folder trees.
public final class BackgroundWork<Value>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var result: Result<Value, any Error>?

    /// Starts `body` at once. It is handed over whole: the caller must not touch what it captures
    /// until `wait()` returns.
    public init(_ body: @escaping () throws -> Value) {
        nonisolated(unsafe) let body = body
        let thread = Thread { [self] in
            let outcome = Result { try body() }
            lock.withLock { result = outcome }
            done.signal()
        }
        thread.stackSize = 16 << 20
        thread.start()
    }

    /// The error the work ended with, if it has ended with one.
    public var failure: (any Error)? {
        lock.withLock {
            if case .failure(let error)? = result { return error }
            return nil
        }
    }

    /// Waits for the work to end and returns its value or rethrows its error. Safe to call twice.
    public func wait() throws -> Value {
        done.wait()
        done.signal()
        return try lock.withLock { result! }.get()
    }
}
