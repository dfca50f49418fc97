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
        let read = progress.databaseBytes + progress.storageBytes
        let rate = Double(read) / elapsed
        var parts: [String] = []
        if progress.dumping || progress.databaseBytes > 0 {
            var part = "database \(formatBytes(progress.databaseBytes))"
            if progress.dumping, let expected = progress.expectedDatabaseBytes, expected > 0 {
                let share = min(Double(progress.databaseBytes) / Double(expected), 0.99)
                let databaseRate = Double(progress.databaseBytes) / elapsed
                let remaining =
                    databaseRate > 0 ? Double(expected - min(expected, progress.databaseBytes)) / databaseRate : 0
                part += String(format: " (~%.0f%%, ETA %.0f s)", share * 100, remaining)
            }
            parts.append(part)
        }
        if progress.hasStorage {
            parts.append("storage \(progress.files) files, \(formatBytes(progress.storageBytes))")
        }
        var text = parts.joined(separator: "; ")
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
