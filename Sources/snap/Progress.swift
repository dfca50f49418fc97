import Foundation
import SnapCore

#if canImport(Glibc)
    import Glibc
#endif

/// One progress line on stderr, redrawn in place at most ten times a second, and only when stderr
/// is a terminal: a file or a pipe never gets carriage returns.
final class ProgressLine {
    private let enabled: Bool
    private let started = Date()
    private var lastDraw = Date.distantPast
    private var drawn = false

    init(quiet: Bool) {
        enabled = !quiet && isatty(2) == 1
    }

    func update(_ progress: SnapshotProgress) {
        guard enabled else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        let elapsed = max(now.timeIntervalSince(started), 0.001)
        let rate = Double(progress.bytes) / elapsed
        var text: String
        switch progress.phase {
        case .database:
            text = "database: \(formatBytes(progress.bytes))"
            if let expected = progress.expectedBytes, expected > 0 {
                let share = min(Double(progress.bytes) / Double(expected), 0.99)
                let remaining = rate > 0 ? Double(expected - min(expected, progress.bytes)) / rate : 0
                text += String(format: " (~%.0f%%, ETA %.0f s)", share * 100, remaining)
            }
        case .storage:
            text = "storage: \(progress.files) files, \(formatBytes(progress.bytes))"
        }
        text += " at \(formatBytes(UInt64(rate)))/s, \(formatBytes(progress.newBytes)) new"
        StandardError.write("\r\(text)\u{1B}[K")
        drawn = true
    }

    /// Clears the line, so that what follows starts on a clean one.
    func finish() {
        guard enabled, drawn else { return }
        StandardError.write("\r\u{1B}[K")
    }
}
