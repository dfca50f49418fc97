/// Which snapshots `snap forget` keeps: restic's `--keep-*` rules, plus safety rules of snap's own.
///
/// Semantics (restic's `ApplyPolicy`): the considered snapshots are walked newest first. Each given
/// count is a bucket kind (last, hourly, daily, weekly, monthly, yearly). A snapshot is kept for a kind
/// when its bucket (its hour, day, ISO week, month or year) differs from the bucket of the snapshot
/// last kept for that kind, while that kind's count is not used up; every keep uses one count. So
/// each kind keeps the newest snapshot of its N newest buckets that hold snapshots (an empty day
/// does not use a count), and `last` keeps the N newest snapshots. As in restic, the oldest snapshot
/// is kept too when a kind still has counts left when it is reached (it extends the history). A
/// snapshot is removed when no kind keeps it.
///
/// Counts: `nil` means the flag was not given, `0` keeps nothing for that kind (as restic), and
/// ``unlimited`` (-1) keeps every bucket of that kind. Other negative counts are rejected by
/// ``validate()``; ``apply(to:)`` treats them as unlimited, the safe reading.
///
/// Buckets are computed in UTC, not in local time as restic does: snapshots may come from machines in
/// different time zones, and local clocks jump at DST changes (a local day can have 23 or 25 hours,
/// an hour can happen twice), so the same snapshots would be grouped differently depending on where
/// and when `forget` runs. UTC buckets are the same everywhere. Weeks are ISO 8601 weeks (Monday to
/// Sunday, week 1 is the week with the year's first Thursday, labelled with its ISO year).
///
/// Groups, as restic's default `--group-by host,paths`: the rules apply to each group of snapshots
/// of the same thing on their own, a group being the host, the database (by name) and the storage
/// folder a snapshot was taken of (``group(of:)``). So files-only snapshots taken between nightly
/// database snapshots, or a second app sharing the repository, never use up a day's or an hour's
/// count that a database snapshot needed.
///
/// Safety rules, stricter than restic:
/// - An empty policy (no count other than `nil` or 0) removes nothing; the caller should refuse
///   to run `forget` without a `--keep-*` flag.
/// - The newest considered snapshot of each group is never removed, whatever the counts say.
/// - With ``tag``, only snapshots carrying that tag are considered: the counts are spent on them
///   alone, and every other snapshot is kept, untouched, with the reason "not tagged T".
public struct RetentionPolicy: Sendable, Equatable, CustomStringConvertible {
    /// A count that keeps every bucket of its kind (restic's -1).
    public static let unlimited = -1

    /// `--keep-last`: the N newest snapshots.
    public var last: Int?
    /// `--keep-hourly`: the newest snapshot of each of the N newest UTC hours with snapshots.
    public var hourly: Int?
    /// `--keep-daily`: the newest snapshot of each of the N newest UTC days with snapshots.
    public var daily: Int?
    /// `--keep-weekly`: the newest snapshot of each of the N newest ISO weeks with snapshots.
    public var weekly: Int?
    /// `--keep-monthly`: the newest snapshot of each of the N newest UTC months with snapshots.
    public var monthly: Int?
    /// `--keep-yearly`: the newest snapshot of each of the N newest UTC years with snapshots.
    public var yearly: Int?
    /// `--tag`: consider only snapshots with this tag; all others are kept.
    public var tag: String?

    public init(
        last: Int? = nil, hourly: Int? = nil, daily: Int? = nil, weekly: Int? = nil, monthly: Int? = nil,
        yearly: Int? = nil, tag: String? = nil
    ) {
        self.last = last
        self.hourly = hourly
        self.daily = daily
        self.weekly = weekly
        self.monthly = monthly
        self.yearly = yearly
        self.tag = tag
    }

    private var counts: [(kind: BucketKind, count: Int?)] {
        [(.last, last), (.hourly, hourly), (.daily, daily), (.weekly, weekly), (.monthly, monthly), (.yearly, yearly)]
    }

    /// True when no count keeps anything (all `nil` or 0): such a policy removes nothing.
    /// The tag filter alone does not make a policy.
    public var isEmpty: Bool { counts.allSatisfy { ($0.count ?? 0) == 0 } }

    /// Rejects counts below -1 with an `invalidInput` error naming the flag.
    public func validate() throws {
        for (kind, count) in counts {
            if let count, count < Self.unlimited {
                throw SnapError(
                    .invalidInput,
                    "--keep-\(kind.name) must be 0 or more, or -1 for unlimited (got \(count))")
            }
        }
    }

    /// `keep 3 last, 7 daily, all weekly snapshots tagged nightly`, or `keep everything (empty policy)`.
    public var description: String {
        if isEmpty { return "keep everything (empty policy)" }
        let parts = counts.compactMap { kind, count -> String? in
            guard let count, count != 0 else { return nil }
            return "\(count < 0 ? "all" : String(count)) \(kind.name)"
        }
        let scope = tag.map { " tagged \($0)" } ?? ""
        return "keep \(parts.joined(separator: ", ")) snapshots\(scope)"
    }

    /// Decides, for every snapshot given, whether it is kept or removed and why.
    ///
    /// The input order does not matter. Snapshots with the same time are ordered by id (the greater id
    /// counts as the newer one) so the decision is deterministic.
    public func apply(to snapshots: [Snapshot]) -> RetentionDecision {
        let items = Dictionary(grouping: snapshots, by: Self.group(of:)).flatMap { group, members in
            apply(toGroup: members, named: group)
        }
        return RetentionDecision(
            items: items.sorted { a, b in a.time != b.time ? a.time < b.time : a.id < b.id })
    }

    /// What a snapshot was taken of, as its retention group: `host H, database D, storage S`
    /// (`no database`, `no storage` where it had none, `imported storage` for every import).
    public static func group(of snapshot: Snapshot) -> String {
        let record = snapshot.record
        let database = record.sources.database.map { "database \($0.name)" } ?? "no database"
        // An import records its archive's name as the storage source: all imports are one series.
        let storage =
            record.sources.storage.map { record.sources.imported == nil ? "storage \($0)" : "imported storage" }
            ?? "no storage"
        return "host \(record.host), \(database), \(storage)"
    }

    private func apply(toGroup snapshots: [Snapshot], named group: String) -> [RetentionDecision.Item] {
        // Newest first; the decision lists the exact reverse (oldest first).
        let ordered = snapshots.sorted { a, b in
            a.record.time != b.record.time ? a.record.time > b.record.time : a.id > b.id
        }
        var reasons = [[String]](repeating: [], count: ordered.count)
        var considered: [Int] = []
        for (index, snapshot) in ordered.enumerated() {
            if let tag, !snapshot.record.tags.contains(tag) {
                reasons[index] = ["not tagged \(tag)"]
            } else {
                considered.append(index)
            }
        }

        if isEmpty {
            for index in considered { reasons[index] = ["empty policy"] }
        } else {
            // remaining < 0: unlimited.
            var buckets = counts.compactMap { kind, count -> (kind: BucketKind, remaining: Int, last: String?)? in
                guard let count, count != 0 else { return nil }
                return (kind, count, nil)
            }
            for (rank, index) in considered.enumerated() {
                let isOldest = rank == considered.count - 1
                for b in buckets.indices where buckets[b].remaining != 0 {
                    let label = buckets[b].kind.label(for: ordered[index].record.time, rank: rank)
                    if label != buckets[b].last {
                        reasons[index].append(label)
                    } else if isOldest {
                        reasons[index].append("\(label) (oldest snapshot)")
                    } else {
                        continue
                    }
                    buckets[b].last = label
                    if buckets[b].remaining > 0 { buckets[b].remaining -= 1 }
                }
                if rank == 0 { reasons[index].append("newest snapshot") }
            }
        }

        return ordered.indices.reversed().map { index in
            RetentionDecision.Item(
                id: ordered[index].id, time: ordered[index].record.time, group: group,
                action: reasons[index].isEmpty ? .remove : .keep, reasons: reasons[index])
        }
    }
}

/// What a ``RetentionPolicy`` decided: every snapshot, kept or removed, with the reasons to keep it.
///
/// Encodes as `{"kept": [...], "removed": [...]}`, each item `{"id", "time", "group", "reasons", "action"}`
/// with `time` in whole UTC seconds (`2026-01-11T12:00:00Z`) and `action` `"keep"` or `"remove"`.
public struct RetentionDecision: Sendable, Equatable, Encodable {
    public enum Action: String, Sendable, Equatable, Encodable {
        case keep
        case remove
    }

    public struct Item: Sendable, Equatable, Encodable {
        public var id: String
        public var time: Timestamp
        /// The retention group (``RetentionPolicy/group(of:)``) the rules were applied in.
        public var group: String
        public var action: Action
        /// Why the snapshot is kept, e.g. `last 1`, `daily 2026-01-11`, `weekly 2026-W02`,
        /// `newest snapshot`, `not tagged nightly`; empty for a removed snapshot.
        public var reasons: [String]

        public init(id: String, time: Timestamp, group: String, action: Action, reasons: [String]) {
            self.id = id
            self.time = time
            self.group = group
            self.action = action
            self.reasons = reasons
        }

        enum CodingKeys: String, CodingKey {
            case id, time, group, reasons, action
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(id, forKey: .id)
            try container.encode(time.iso8601Seconds, forKey: .time)
            try container.encode(group, forKey: .group)
            try container.encode(reasons, forKey: .reasons)
            try container.encode(action, forKey: .action)
        }
    }

    /// Every snapshot given to ``RetentionPolicy/apply(to:)``, oldest first (as `snap list`).
    public var items: [Item]

    public init(items: [Item]) { self.items = items }

    /// The kept snapshots, oldest first.
    public var kept: [Item] { items.filter { $0.action == .keep } }
    /// The snapshots to remove, oldest first.
    public var removed: [Item] { items.filter { $0.action == .remove } }

    enum CodingKeys: String, CodingKey {
        case kept, removed
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(kept, forKey: .kept)
        try container.encode(removed, forKey: .removed)
    }
}

private enum BucketKind {
    case last
    case hourly
    case daily
    case weekly
    case monthly
    case yearly

    var name: String {
        switch self {
        case .last: "last"
        case .hourly: "hourly"
        case .daily: "daily"
        case .weekly: "weekly"
        case .monthly: "monthly"
        case .yearly: "yearly"
        }
    }

    /// The bucket of a snapshot, as the reason shown to the user. Equal labels mean the same bucket;
    /// `rank` is the snapshot's position among the considered ones, newest first, from 0.
    func label(for time: Timestamp, rank: Int) -> String {
        let c = time.components
        let date = "\(digits(c.year, 4))-\(digits(c.month, 2))-\(digits(c.day, 2))"
        switch self {
        case .last: return "last \(rank + 1)"
        case .hourly: return "hourly \(date) \(digits(c.hour, 2))h"
        case .daily: return "daily \(date)"
        case .weekly:
            let week = RetentionPolicy.isoWeek(of: time)
            return "weekly \(digits(week.year, 4))-W\(digits(week.week, 2))"
        case .monthly: return "monthly \(digits(c.year, 4))-\(digits(c.month, 2))"
        case .yearly: return "yearly \(digits(c.year, 4))"
        }
    }
}

extension RetentionPolicy {
    /// The ISO 8601 week of a UTC time: weeks run Monday to Sunday and belong to the year of their
    /// Thursday, so Dec 29-31 can be week 1 of the next year and Jan 1-3 week 52 or 53 of the previous.
    static func isoWeek(of time: Timestamp) -> (year: Int, week: Int) {
        let days = time.seconds.floorDivided(by: 86_400)  // 1970-01-01 was a Thursday
        let weekday = (days + 3 - (days + 3).floorDivided(by: 7) * 7) + 1  // Monday 1 ... Sunday 7
        let thursday = Timestamp(seconds: (days - weekday + 4) * 86_400).components
        let leap = thursday.year % 4 == 0 && (thursday.year % 100 != 0 || thursday.year % 400 == 0)
        let daysBeforeMonth = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334]
        let ordinal = daysBeforeMonth[thursday.month - 1] + thursday.day + (leap && thursday.month > 2 ? 1 : 0)
        return (thursday.year, (ordinal - 1) / 7 + 1)
    }
}

private func digits(_ value: Int, _ width: Int) -> String {
    let text = String(value)
    return text.count >= width ? text : String(repeating: "0", count: width - text.count) + text
}
