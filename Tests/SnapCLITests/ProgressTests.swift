import Foundation
import SnapCore
import SnapTestSupport
import Testing

@Suite struct ProgressTests {
    @Test func progressOnlyOnATerminalAndASummaryLine() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        for index in 0..<4 {
            try writeFile(storage + "/f\(index).bin", pseudoRandomBytes(8 << 20, seed: UInt64(index)))
        }
        try snap("--repo", repo, "init")

        // Into a pipe: the id on stdout, one summary line on stderr, no carriage return anywhere.
        let piped = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage)
        #expect(piped.status == 0)
        #expect(piped.stdout.trimmingCharacters(in: .whitespacesAndNewlines).count == 64)
        #expect(!piped.stderr.contains("\r") && !piped.stdout.contains("\r"))
        #expect(piped.stderr.hasPrefix("snap: snapshot ") && piped.stderr.contains("new"), "\(piped.stderr)")
        #expect(piped.stderr.split(separator: "\n").count == 1)

        // --quiet: nothing on stderr.
        let quiet = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage, "--quiet")
        #expect(quiet.status == 0 && quiet.stderr.isEmpty)

        // Under a pseudo-terminal (script(1)) the progress line is drawn and redrawn in place.
        let command = [snapBinary, "--repo", repo, "snapshot", "--no-db", "--storage", storage, "--quiet"]
        let terminalQuiet = try run("/usr/bin/script", ["-qec", command.joined(separator: " "), "/dev/null"])
        #expect(!terminalQuiet.stdout.contains("storage "))
        try writeFile(storage + "/new.bin", pseudoRandomBytes(40 << 20, seed: 9))
        let terminal = try run(
            "/usr/bin/script", ["-qec", command.dropLast().joined(separator: " "), "/dev/null"],
            environment: ["SNAP_CACHE_DIR": folder.file("cache")])
        #expect(terminal.status == 0)
        #expect(terminal.stdout.contains("\rstorage "), "\(terminal.stdout.debugDescription)")
        #expect(terminal.stdout.contains(" files, "), "\(terminal.stdout.debugDescription)")
        #expect(terminal.stdout.contains("snap: snapshot "))
    }
}
