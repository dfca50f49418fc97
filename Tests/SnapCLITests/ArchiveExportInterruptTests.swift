import Foundation
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// An export stopped part way leaves nothing in the output folder: the archive is written
/// nameless (`O_TMPFILE`) and linked into place only when complete, so even SIGKILL leaves
/// nothing; where the filesystem cannot do that, a named temporary is removed on SIGINT, SIGTERM
/// and SIGHUP.
@Suite struct ArchiveExportInterruptTests {
    @Test func anInterruptedExportLeavesNothingBehind() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        // 45 MB of text: deflating it keeps an export busy for a while.
        let text = try run(
            "/usr/bin/env",
            [
                "python3", "-c",
                """
                import random, sys
                random.seed(1)
                words = [b"alpha", b"beta", b"gamma", b"delta", b"order", b"user", b"payload", b"42"]
                with open(sys.argv[1], "wb") as out:
                    for _ in range(600_000):
                        out.write(b" ".join(random.choice(words) for _ in range(12)) + b"\\n")
                """, storage + "/log.txt",
            ])
        #expect(text.status == 0, "\(text.stderr)")
        #expect(try snap("--repo", repo, "init").status == 0)
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
        let out = folder.file("out")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)

        let cases: [(named: Bool, signal: Int32)] = [
            (false, SIGTERM), (false, SIGKILL), (false, SIGINT), (false, SIGHUP), (true, SIGTERM), (true, SIGINT),
            (true, SIGHUP),
        ]
        for (named, signal) in cases {
            let export = Process()
            export.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            // Signals the test runner ignores would stay ignored in snap (as under nohup).
            export.arguments = [
                "--default-signal=INT,TERM,HUP", snapBinary, "--repo", repo, "export", "latest", "-o", out,
            ]
            var environment = ProcessInfo.processInfo.environment
            if named { environment["SNAP_TEST_NO_TMPFILE"] = "1" }
            export.environment = environment
            export.standardError = FileHandle.nullDevice
            export.standardOutput = FileHandle.nullDevice
            try export.run()
            // Wait until a few MB of the archive are written: mid-export.
            let deadline = Date().addingTimeInterval(60)
            while export.isRunning && written(by: export.processIdentifier) < 2 << 20 && Date() < deadline {
                usleep(20_000)
            }
            #expect(export.isRunning, "the export ended before it could be interrupted")
            let during = folderListing(out)
            if named {
                #expect(during.count == 1 && during.first?.hasPrefix(".backup_") == true, "\(during)")
            } else {
                #expect(during.isEmpty, "a nameless file has no name in the folder: \(during)")
            }
            kill(export.processIdentifier, signal)
            export.waitUntilExit()
            #expect(export.terminationReason == .uncaughtSignal && export.terminationStatus == signal)
            #expect(
                folderListing(out).isEmpty, "\(named ? "named" : "nameless"), signal \(signal): \(folderListing(out))")
        }

        // Nothing stands in the way of the next export, which is complete.
        let complete = try snap("--repo", repo, "export", "latest", "-o", out)
        #expect(complete.status == 0, "\(complete.stderr)")
        #expect(folderListing(out).count == 1 && folderListing(out).first?.hasPrefix("backup_") == true)
        #expect(try shell("gzip -t \(shellQuoted(out + "/" + folderListing(out)[0]))").status == 0)
    }

    /// Bytes the process has written so far (`wchar` of /proc/PID/io), 0 when it cannot be read.
    private func written(by pid: Int32) -> Int {
        guard let io = try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8) else { return 0 }
        for line in io.split(separator: "\n") where line.hasPrefix("wchar:") {
            return Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return 0
    }
}
