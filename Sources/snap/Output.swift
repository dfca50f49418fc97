import Foundation
import SnapCore

/// Human-readable sizes: 1.5 MiB, 320 B.
func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

/// JSON for `--json` output: sorted keys, so scripts and tests see a stable shape.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// The fields `snap list --json` and `snap show --json` print for a snapshot.
struct SnapshotSummary: Encodable {
    var id: String
    var shortId: String
    var time: String
    var host: String
    var tags: [String]
    var storage: String?
    var database: DatabaseFacts?
    var databaseReusedFrom: String?
    var totals: SnapshotRecord.Totals
    var errors: [String]

    init(_ snapshot: Snapshot) {
        id = snapshot.id
        shortId = snapshot.shortID
        time = snapshot.record.time.iso8601Seconds
        host = snapshot.record.host
        tags = snapshot.record.tags
        storage = snapshot.record.sources.storage
        database = snapshot.record.sources.database
        databaseReusedFrom = snapshot.record.sources.databaseReusedFrom
        totals = snapshot.record.totals
        errors = snapshot.record.errors
    }

    enum CodingKeys: String, CodingKey {
        case id, time, host, tags, storage, database, totals, errors
        case shortId = "short_id"
        case databaseReusedFrom = "database_reused_from"
    }
}

/// Pads columns to align a table.
func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows {
        for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
    }
    return rows.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

/// Parses sizes like 65536, 64K, 4M or 1G (binary units).
func parseSize(_ text: String) -> Int? {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = text.uppercased().last, let unit = units[last] {
        return Int(text.dropLast()).map { $0 * unit }
    }
    return Int(text)
}

/// A time in the machine's local zone, to the second: `2026-01-11 13:00:00`.
func localTime(_ time: Timestamp) -> String {
    var seconds = time_t(time.seconds)
    var parts = tm()
    localtime_r(&seconds, &parts)
    return String(
        format: "%04d-%02d-%02d %02d:%02d:%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
        Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
}
