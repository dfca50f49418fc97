import Foundation
import Testing

@testable import SnapCore

/// `"2026-01-11 14:00"` or `"2026-01-11 14:00:59"`, UTC.
private func utc(_ text: String) -> Timestamp {
    let seconds = text.count == 16 ? text + ":00" : text
    return Timestamp(iso8601: seconds.replacingOccurrences(of: " ", with: "T") + "Z")!
}

/// A fake 64-hex id that encodes the snapshot's index in its table.
private func fakeID(_ index: Int) -> String {
    let hex = String(index, radix: 16)
    return String(repeating: "0", count: 64 - hex.count) + hex
}

private func index(of item: RetentionDecision.Item) -> Int { Int(item.id, radix: 16)! }

private func makeSnapshot(_ index: Int, _ time: Timestamp, tags: [String] = []) -> Snapshot {
    let record = SnapshotRecord(
        time: time, host: "test", tags: tags, program: "snap test", sources: .init(), manifest: .init(),
        totals: .init(), errors: [])
    return Snapshot(id: fakeID(index), record: record)
}

/// Snapshots whose ids are their indices in `times`.
private func makeSnapshots(_ times: [String], tags: [[String]] = []) -> [Snapshot] {
    times.enumerated().map { index, text in
        makeSnapshot(index, utc(text), tags: index < tags.count ? tags[index] : [])
    }
}

private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Checks that hold for every decision, then returns it.
@discardableResult
private func decide(_ policy: RetentionPolicy, _ snapshots: [Snapshot]) -> RetentionDecision {
    let decision = policy.apply(to: snapshots)
    #expect(Set(decision.items.map(\.id)) == Set(snapshots.map(\.id)))
    #expect(decision.items.count == snapshots.count)
    #expect(zip(decision.items, decision.items.dropFirst()).allSatisfy { $0.time <= $1.time }, "oldest first")
    #expect(decision.kept.allSatisfy { !$0.reasons.isEmpty })
    #expect(decision.removed.allSatisfy { $0.reasons.isEmpty })
    #expect(decision.kept.count + decision.removed.count == decision.items.count)
    let considered = decision.items.filter { item in
        policy.tag.map { tag in snapshots.first { $0.id == item.id }!.record.tags.contains(tag) } ?? true
    }
    if let newest = considered.last {
        #expect(newest.action == .keep, "the newest considered snapshot is never removed")
        if !policy.isEmpty { #expect(newest.reasons.last == "newest snapshot") }
    }
    if policy.isEmpty { #expect(decision.removed.isEmpty) }
    var generator = SplitMix64(state: 42)
    #expect(policy.apply(to: snapshots.shuffled(using: &generator)) == decision, "input order does not matter")
    return decision
}

struct RetentionCase: CustomTestStringConvertible, Sendable {
    var name: String
    var policy: RetentionPolicy
    var times: [String]
    var tags: [[String]] = []
    /// Indices into `times`; every other snapshot must be removed.
    var kept: Set<Int>
    /// Exact reasons for some indices.
    var reasons: [Int: [String]] = [:]
    var testDescription: String { name }
}

private let sameHour = [
    "2026-01-11 10:05", "2026-01-11 10:40", "2026-01-11 11:10", "2026-01-11 11:50", "2026-01-11 13:00",
]
private let daysWithGaps = [
    "2026-01-01 08:00", "2026-01-01 20:00", "2026-01-02 09:00", "2026-01-05 10:00", "2026-01-05 23:59",
    "2026-01-09 00:00", "2026-01-09 12:00",
]
/// 2025-12-30 is in ISO week 2026-W01 (Monday 2025-12-29 to Sunday 2026-01-04).
private let mixed = [
    "2025-11-20 12:00", "2025-12-15 12:00", "2025-12-30 12:00", "2026-01-02 09:00", "2026-01-02 18:00",
    "2026-01-05 08:00", "2026-01-06 08:00", "2026-01-06 20:00",
]

private let retentionCases: [RetentionCase] = [
    // keep-last
    .init(
        name: "last 2", policy: .init(last: 2),
        times: ["2026-01-01 12:00", "2026-01-02 12:00", "2026-01-03 12:00", "2026-01-04 12:00", "2026-01-05 12:00"],
        kept: [3, 4], reasons: [4: ["last 1", "newest snapshot"], 3: ["last 2"]]),
    .init(
        name: "last 10 of 3", policy: .init(last: 10),
        times: ["2026-01-01 12:00", "2026-01-01 12:01", "2026-01-01 12:02"],
        kept: [0, 1, 2], reasons: [0: ["last 3"], 1: ["last 2"]]),
    .init(
        name: "last 0 is no rule", policy: .init(last: 0, daily: 1),
        times: ["2026-01-01 12:00", "2026-01-02 12:00", "2026-01-03 12:00"],
        kept: [2], reasons: [2: ["daily 2026-01-03", "newest snapshot"]]),
    .init(
        name: "equal times order by id", policy: .init(last: 1),
        times: ["2026-01-01 00:00", "2026-01-01 00:00"], kept: [1]),
    // keep-hourly
    .init(
        name: "hourly 2, several per hour", policy: .init(hourly: 2), times: sameHour,
        kept: [3, 4], reasons: [4: ["hourly 2026-01-11 13h", "newest snapshot"], 3: ["hourly 2026-01-11 11h"]]),
    .init(
        name: "hourly 3", policy: .init(hourly: 3), times: sameHour,
        kept: [1, 3, 4], reasons: [1: ["hourly 2026-01-11 10h"]]),
    .init(
        name: "hourly 10 keeps the oldest too", policy: .init(hourly: 10), times: sameHour,
        kept: [0, 1, 3, 4], reasons: [0: ["hourly 2026-01-11 10h (oldest snapshot)"]]),
    .init(
        name: "hourly, same hour on different days", policy: .init(hourly: 2),
        times: ["2026-01-10 23:10", "2026-01-11 23:05", "2026-01-11 23:30"],
        kept: [0, 2], reasons: [0: ["hourly 2026-01-10 23h"]]),
    // keep-daily
    .init(
        name: "daily 3 with gaps", policy: .init(daily: 3), times: daysWithGaps,
        kept: [2, 4, 6],
        reasons: [6: ["daily 2026-01-09", "newest snapshot"], 4: ["daily 2026-01-05"], 2: ["daily 2026-01-02"]]),
    .init(
        name: "daily 4 uses every count", policy: .init(daily: 4), times: daysWithGaps,
        kept: [1, 2, 4, 6], reasons: [1: ["daily 2026-01-01"]]),
    .init(
        name: "daily 5 keeps the oldest too", policy: .init(daily: 5), times: daysWithGaps,
        kept: [0, 1, 2, 4, 6], reasons: [0: ["daily 2026-01-01 (oldest snapshot)"]]),
    .init(
        name: "daily, UTC midnight", policy: .init(daily: 1),
        times: ["2026-03-01 23:59:59", "2026-03-02 00:00:00"], kept: [1]),
    .init(
        name: "daily 2, UTC midnight", policy: .init(daily: 2),
        times: ["2026-03-01 23:59:59", "2026-03-02 00:00:00"], kept: [0, 1],
        reasons: [0: ["daily 2026-03-01"], 1: ["daily 2026-03-02", "newest snapshot"]]),
    .init(
        name: "daily -1 (unlimited)", policy: .init(daily: RetentionPolicy.unlimited),
        times: ["2026-01-01 08:00", "2026-01-01 20:00", "2026-01-02 09:00", "2026-01-02 10:00"],
        kept: [0, 1, 3], reasons: [0: ["daily 2026-01-01 (oldest snapshot)"], 1: ["daily 2026-01-01"]]),
    .init(
        name: "last -1 (unlimited)", policy: .init(last: -1),
        times: ["2026-01-01 08:00", "2026-01-01 08:00", "2026-01-02 09:00", "2026-01-02 10:00"],
        kept: [0, 1, 2, 3], reasons: [0: ["last 4"], 3: ["last 1", "newest snapshot"]]),
    // keep-weekly: ISO weeks around the new year
    .init(
        name: "weekly 2, Dec 29 is in 2026-W01", policy: .init(weekly: 2),
        times: ["2025-12-28 12:00", "2025-12-29 12:00", "2026-01-01 12:00", "2026-01-04 12:00", "2026-01-05 12:00"],
        kept: [3, 4], reasons: [4: ["weekly 2026-W02", "newest snapshot"], 3: ["weekly 2026-W01"]]),
    .init(
        name: "weekly 3, Dec 28 is in 2025-W52", policy: .init(weekly: 3),
        times: ["2025-12-28 12:00", "2025-12-29 12:00", "2026-01-01 12:00", "2026-01-04 12:00", "2026-01-05 12:00"],
        kept: [0, 3, 4], reasons: [0: ["weekly 2025-W52"]]),
    .init(
        name: "weekly, Jan 3 2021 is in 2020-W53", policy: .init(weekly: 2),
        times: ["2020-12-31 12:00", "2021-01-03 12:00", "2021-01-04 12:00"],
        kept: [1, 2], reasons: [1: ["weekly 2020-W53"], 2: ["weekly 2021-W01", "newest snapshot"]]),
    .init(
        name: "weekly, Jan 1 2023 is in 2022-W52", policy: .init(weekly: 2),
        times: ["2022-12-26 12:00", "2023-01-01 12:00", "2023-01-02 12:00"],
        kept: [1, 2], reasons: [1: ["weekly 2022-W52"], 2: ["weekly 2023-W01", "newest snapshot"]]),
    .init(
        name: "weekly, Dec 30 2024 is in 2025-W01", policy: .init(weekly: 2),
        times: ["2024-12-29 12:00", "2024-12-30 12:00", "2025-01-01 12:00"],
        kept: [0, 2], reasons: [0: ["weekly 2024-W52"], 2: ["weekly 2025-W01", "newest snapshot"]]),
    // keep-monthly, keep-yearly
    .init(
        name: "monthly 2", policy: .init(monthly: 2),
        times: ["2026-01-31 23:00", "2026-02-01 00:00", "2026-02-28 12:00", "2026-03-15 12:00", "2026-03-20 12:00"],
        kept: [2, 4], reasons: [4: ["monthly 2026-03", "newest snapshot"], 2: ["monthly 2026-02"]]),
    .init(
        name: "yearly 2", policy: .init(yearly: 2),
        times: ["2023-06-01 12:00", "2024-12-31 23:59:59", "2025-01-01 00:00:00", "2025-07-01 12:00"],
        kept: [1, 3], reasons: [1: ["yearly 2024"], 3: ["yearly 2025", "newest snapshot"]]),
    .init(
        name: "yearly 5", policy: .init(yearly: 5),
        times: ["2023-06-01 12:00", "2024-12-31 23:59:59", "2025-01-01 00:00:00", "2025-07-01 12:00"],
        kept: [0, 1, 3], reasons: [0: ["yearly 2023"]]),
    // combinations, worked out by hand
    .init(
        name: "last 2, daily 3, weekly 2, monthly 2, yearly 1",
        policy: .init(last: 2, daily: 3, weekly: 2, monthly: 2, yearly: 1), times: mixed,
        kept: [2, 4, 5, 6, 7],
        reasons: [
            7: [
                "last 1", "daily 2026-01-06", "weekly 2026-W02", "monthly 2026-01", "yearly 2026", "newest snapshot",
            ],
            6: ["last 2"], 5: ["daily 2026-01-05"], 4: ["daily 2026-01-02", "weekly 2026-W01"],
            2: ["monthly 2025-12"],
        ]),
    .init(
        name: "last 1, daily 2, monthly 3, yearly 2", policy: .init(last: 1, daily: 2, monthly: 3, yearly: 2),
        times: mixed, kept: [0, 2, 5, 7],
        reasons: [
            7: ["last 1", "daily 2026-01-06", "monthly 2026-01", "yearly 2026", "newest snapshot"],
            5: ["daily 2026-01-05"], 2: ["monthly 2025-12", "yearly 2025"], 0: ["monthly 2025-11"],
        ]),
    // tag filter
    .init(
        name: "daily 1 tagged nightly: newest kept, untagged untouched", policy: .init(daily: 1, tag: "nightly"),
        times: ["2026-01-01 10:00", "2026-01-02 10:00", "2026-01-03 10:00", "2026-01-03 12:00", "2026-01-03 18:00"],
        tags: [["nightly"], ["nightly"], [], ["manual", "nightly"], ["manual"]],
        kept: [2, 3, 4],
        reasons: [
            2: ["not tagged nightly"], 3: ["daily 2026-01-03", "newest snapshot"], 4: ["not tagged nightly"],
        ]),
    .init(
        name: "last 2 tagged n: counts spent on tagged only", policy: .init(last: 2, tag: "n"),
        times: ["2026-01-01 10:00", "2026-01-02 10:00", "2026-01-03 10:00", "2026-01-04 10:00", "2026-01-05 10:00"],
        tags: [["n"], ["n"], [], ["n"], ["x"]],
        kept: [1, 2, 3, 4], reasons: [1: ["last 2"], 3: ["last 1", "newest snapshot"], 4: ["not tagged n"]]),
    .init(
        name: "tag nobody has", policy: .init(last: 1, tag: "none"),
        times: ["2026-01-01 10:00", "2026-01-02 10:00"], tags: [["a"], []],
        kept: [0, 1], reasons: [0: ["not tagged none"], 1: ["not tagged none"]]),
    // empty policy
    .init(
        name: "empty policy", policy: .init(), times: ["2026-01-01 10:00", "2026-01-02 10:00"],
        kept: [0, 1], reasons: [0: ["empty policy"], 1: ["empty policy"]]),
    .init(
        name: "all counts 0 is empty", policy: .init(last: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0, yearly: 0),
        times: ["2026-01-01 10:00", "2026-01-02 10:00"], kept: [0, 1]),
    .init(
        name: "empty policy with tag", policy: .init(tag: "t"),
        times: ["2026-01-01 10:00", "2026-01-02 10:00"], tags: [["t"], []],
        kept: [0, 1], reasons: [0: ["empty policy"], 1: ["not tagged t"]]),
    .init(name: "no snapshots", policy: .init(last: 1), times: [], kept: []),
]

@Suite struct RetentionTests {
    @Test(arguments: retentionCases)
    func policyKeepsExactly(_ testCase: RetentionCase) {
        let snapshots = makeSnapshots(testCase.times, tags: testCase.tags)
        let decision = decide(testCase.policy, snapshots)
        #expect(Set(decision.kept.map(index(of:))) == testCase.kept)
        #expect(Set(decision.removed.map(index(of:))) == Set(testCase.times.indices).subtracting(testCase.kept))
        for (index, reasons) in testCase.reasons {
            #expect(decision.items.first { $0.id == fakeID(index) }?.reasons == reasons, "reasons of \(index)")
        }
    }

    /// Every 6 hours for 100 days, 2025-10-01 00:00 to 2026-01-08 18:00 (a Thursday in 2026-W02).
    @Test func hundredDaysEverySixHours() {
        let start = utc("2025-10-01 00:00")
        let snapshots = (0..<400).map { makeSnapshot($0, Timestamp(seconds: start.seconds + Int64($0) * 6 * 3600)) }
        let policy = RetentionPolicy(last: 2, daily: 3, weekly: 2, monthly: 2, yearly: 1)
        let decision = decide(policy, snapshots)
        #expect(
            decision.kept.map(\.time.iso8601Seconds) == [
                "2025-12-31T18:00:00Z",  // monthly 2025-12
                "2026-01-04T18:00:00Z",  // weekly 2026-W01 (Sunday)
                "2026-01-06T18:00:00Z",  // daily
                "2026-01-07T18:00:00Z",  // daily
                "2026-01-08T12:00:00Z",  // last 2
                "2026-01-08T18:00:00Z",  // newest
            ])
        #expect(decision.removed.count == 394)
        #expect(
            decision.kept.map(\.reasons) == [
                ["monthly 2025-12"], ["weekly 2026-W01"], ["daily 2026-01-06"], ["daily 2026-01-07"], ["last 2"],
                ["last 1", "daily 2026-01-08", "weekly 2026-W02", "monthly 2026-01", "yearly 2026", "newest snapshot"],
            ])
    }

    /// Random series and policies against an independent formulation that uses Foundation's calendars:
    /// per kind, the newest snapshot of each of the N newest buckets, plus the oldest snapshot when the
    /// kind has fewer than N buckets (or is unlimited).
    @Test func matchesIndependentReference() {
        var utcCalendar = Calendar(identifier: .gregorian)
        utcCalendar.timeZone = TimeZone(identifier: "UTC")!
        var isoCalendar = Calendar(identifier: .iso8601)
        isoCalendar.timeZone = TimeZone(identifier: "UTC")!
        func key(_ kind: Int, _ time: Timestamp, _ rank: Int) -> [Int] {
            let date = Date(timeIntervalSince1970: TimeInterval(time.seconds))
            let c = utcCalendar.dateComponents([.year, .month, .day, .hour], from: date)
            switch kind {
            case 0: return [rank]
            case 1: return [c.year!, c.month!, c.day!, c.hour!]
            case 2: return [c.year!, c.month!, c.day!]
            case 3:
                let w = isoCalendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: date)
                return [w.yearForWeekOfYear!, w.weekOfYear!]
            case 4: return [c.year!, c.month!]
            default: return [c.year!]
            }
        }
        var random = SplitMix64(state: 2026)
        let choices: [Int?] = [nil, 0, 1, 2, 3, 5, 8, -1]
        let gaps: [Int64] = [0, 60, 1800, 3600, 5 * 3600, 86_400, 3 * 86_400, 8 * 86_400, 40 * 86_400, 200 * 86_400]
        for _ in 0..<300 {
            let count = Int.random(in: 0...60, using: &random)
            var seconds = utc("2019-12-20 00:00").seconds + Int64.random(in: 0...(6 * 365 * 86_400), using: &random)
            var snapshots: [Snapshot] = []
            for index in 0..<count {
                seconds += gaps.randomElement(using: &random)! + Int64.random(in: 0...59, using: &random)
                let tags = [["a"], ["b"], ["a", "b"], []].randomElement(using: &random)!
                snapshots.append(makeSnapshot(index, Timestamp(seconds: seconds), tags: tags))
            }
            let counts = (0..<6).map { _ in choices.randomElement(using: &random)! }
            let policy = RetentionPolicy(
                last: counts[0], hourly: counts[1], daily: counts[2], weekly: counts[3], monthly: counts[4],
                yearly: counts[5], tag: Bool.random(using: &random) ? "a" : nil)
            let decision = policy.apply(to: snapshots)

            let considered = snapshots.filter { policy.tag == nil || $0.record.tags.contains(policy.tag!) }
                .sorted { $0.record.time != $1.record.time ? $0.record.time > $1.record.time : $0.id > $1.id }
            var expected = Set(snapshots.map(\.id)).subtracting(considered.map(\.id))
            if policy.isEmpty {
                expected.formUnion(considered.map(\.id))
            } else if let newest = considered.first {
                expected.insert(newest.id)
                for (kind, count) in counts.enumerated() {
                    guard let count, count != 0 else { continue }
                    var newestPerBucket: [(key: [Int], id: String)] = []
                    for (rank, snapshot) in considered.enumerated() {
                        let k = key(kind, snapshot.record.time, rank)
                        if !newestPerBucket.contains(where: { $0.key == k }) {
                            newestPerBucket.append((k, snapshot.id))
                        }
                    }
                    expected.formUnion(newestPerBucket.prefix(count < 0 ? Int.max : count).map(\.id))
                    if count < 0 || newestPerBucket.count < count { expected.insert(considered.last!.id) }
                }
            }
            #expect(Set(decision.kept.map(\.id)) == expected, "\(policy) on \(snapshots.count) snapshots")
            #expect(Set(decision.removed.map(\.id)) == Set(snapshots.map(\.id)).subtracting(expected))
        }
    }

    @Test(arguments: [
        ("2026-01-01 00:00", 2026, 1), ("2025-12-29 00:00", 2026, 1), ("2025-12-28 23:59:59", 2025, 52),
        ("2026-12-31 12:00", 2026, 53), ("2027-01-03 12:00", 2026, 53), ("2027-01-04 00:00", 2027, 1),
        ("2021-01-03 12:00", 2020, 53), ("2023-01-01 12:00", 2022, 52), ("2024-12-30 12:00", 2025, 1),
        ("2008-12-29 00:00", 2009, 1), ("2010-01-03 00:00", 2009, 53), ("2000-02-29 00:00", 2000, 9),
        ("1969-12-31 23:00", 1970, 1), ("1968-12-30 00:00", 1969, 1),
    ])
    func isoWeekEdges(_ text: String, _ year: Int, _ week: Int) {
        let result = RetentionPolicy.isoWeek(of: utc(text))
        #expect(result.year == year && result.week == week)
    }

    @Test func isoWeekMatchesFoundationEveryDay() {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let first = utc("1995-01-01 13:00").seconds
        for day in Int64(0)..<Int64(16_000) {
            let seconds = first + day * 86_400
            let c = calendar.dateComponents(
                [.yearForWeekOfYear, .weekOfYear], from: Date(timeIntervalSince1970: TimeInterval(seconds)))
            let mine = RetentionPolicy.isoWeek(of: Timestamp(seconds: seconds))
            #expect(mine.year == c.yearForWeekOfYear && mine.week == c.weekOfYear)
            if mine.year != c.yearForWeekOfYear || mine.week != c.weekOfYear { break }
        }
    }

    @Test func emptinessValidationAndDescription() throws {
        #expect(RetentionPolicy().isEmpty)
        #expect(RetentionPolicy(last: 0, yearly: 0, tag: "x").isEmpty)
        #expect(!RetentionPolicy(weekly: 1).isEmpty)
        #expect(!RetentionPolicy(monthly: -1).isEmpty)
        try RetentionPolicy(last: -1, hourly: 0, daily: 7).validate()
        #expect(throws: SnapError.self) { try RetentionPolicy(daily: -2).validate() }
        let error = #expect(throws: SnapError.self) { try RetentionPolicy(last: 1, weekly: -5).validate() }
        #expect(error?.code == .invalidInput)
        #expect(error?.message == "--keep-weekly must be 0 or more, or -1 for unlimited (got -5)")
        #expect(RetentionPolicy().description == "keep everything (empty policy)")
        #expect(
            RetentionPolicy(last: 3, hourly: 0, daily: 7, weekly: -1, tag: "nightly").description
                == "keep 3 last, 7 daily, all weekly snapshots tagged nightly")
    }

    @Test func encodesKeptAndRemovedAsJSON() throws {
        let snapshots = makeSnapshots(["2026-01-10 12:00:00.5", "2026-01-11 12:00"])
        let decision = decide(RetentionPolicy(last: 1), snapshots)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(decision), as: UTF8.self)
        #expect(
            json
                == #"{"kept":[{"action":"keep","group":"host test, no database, no storage","id":"\#(fakeID(1))","#
                + #""reasons":["last 1","newest snapshot"],"time":"2026-01-11T12:00:00Z"}],"#
                + #""removed":[{"action":"remove","group":"host test, no database, no storage","id":"\#(fakeID(0))","#
                + #""reasons":[],"time":"2026-01-10T12:00:00Z"}]}"#)
    }

    /// Files-only snapshots every hour and a storage snapshot each night, in one repository: each
    /// group keeps its own days, so the nightly ones survive --keep-daily (pooled, the hourly
    /// files-only snapshots would take every day's count).
    @Test func groupsKeepTheirOwnBuckets() {
        var snapshots: [Snapshot] = []
        for day in 10...13 {
            let nightly = makeSnapshot(snapshots.count, utc("2026-01-\(day) 02:00"))
            snapshots.append(Snapshot(id: nightly.id, record: withStorage(nightly.record, "/srv/app/storage")))
            for hour in ["08", "14", "20"] {
                snapshots.append(makeSnapshot(snapshots.count, utc("2026-01-\(day) \(hour):00")))
            }
        }
        let decision = decide(RetentionPolicy(daily: 3), snapshots)
        let keptNightly = decision.kept.filter { $0.group.hasSuffix("storage /srv/app/storage") }
        #expect(keptNightly.map(\.time) == ["2026-01-11 02:00", "2026-01-12 02:00", "2026-01-13 02:00"].map(utc))
        let keptOthers = decision.kept.filter { $0.group == "host test, no database, no storage" }
        #expect(keptOthers.map(\.time) == ["2026-01-11 20:00", "2026-01-12 20:00", "2026-01-13 20:00"].map(utc))
        #expect(decision.removed.count == snapshots.count - 6)
        // Imports record their archive's name as the storage source; they are still one series.
        let imports = (0..<3).map { index -> Snapshot in
            var snapshot = makeSnapshot(100 + index, utc("2026-01-0\(index + 1) 02:00"))
            snapshot.record.sources.storage = "backup_2026010\(index + 1)_020000.tar.gz:storage/"
            snapshot.record.sources.imported = .init(
                file: "backup_2026010\(index + 1)_020000.tar.gz", size: 1, sha256: "", compressedDump: false)
            return snapshot
        }
        #expect(Set(imports.map(RetentionPolicy.group(of:))).count == 1)
        #expect(decide(RetentionPolicy(last: 1), imports).removed.count == 2)
        // Another host's snapshots are a group of their own too.
        #expect(
            RetentionPolicy.group(of: makeSnapshot(0, utc("2026-01-10 00:00")))
                != RetentionPolicy.group(
                    of: {
                        var other = makeSnapshot(0, utc("2026-01-10 00:00"))
                        other.record.host = "other"
                        return other
                    }()))
    }
}

private func withStorage(_ record: SnapshotRecord, _ storage: String) -> SnapshotRecord {
    var record = record
    record.sources.storage = storage
    return record
}
