import ArgumentParser
import Foundation
import SnapCore
import SnapPostgres

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Exit codes, documented in the README.
enum ExitStatus {
    static let success: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 2
    /// A snapshot was recorded, but some files could not be read (listed in the snapshot).
    static let partialSnapshot: Int32 = 3
    /// Another process holds the repository lock (prune or forget while the repository is busy).
    static let locked: Int32 = 4
}

@main
struct Snap: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "snap",
        abstract: "Incremental, deduplicated snapshots of a PostgreSQL database and its storage folder.",
        discussion: """
            The repository is --repo, else $SNAP_REPO, else /backups.

            Examples:
              snap --repo /backups init
              snap --repo /backups snapshot --db "dbname=app" --storage /srv/app/storage --tag hourly
              snap --repo /backups list
              snap --repo /backups restore latest --db "dbname=app_copy" --storage-to /tmp/storage
            """,
        version: version,
        subcommands: [
            InitCommand.self, SnapshotCommand.self, ListCommand.self, ShowCommand.self,
            RestoreCommand.self, CheckCommand.self, ExportCommand.self, ImportCommand.self, ForgetCommand.self,
            PruneCommand.self, DiffCommand.self, StatsCommand.self,
        ]
    )

    @OptionGroup var global: GlobalOptions

    static func main() {
        // Before anything reaches OpenSSL (libpq may): snap's threads may still hash while it exits.
        CryptoLibrary.prepare()
        // `snap export - | head` must end quietly, not die of SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        // A SIGTERM to snap alone must stop its pg_dump or pg_restore too.
        RunningChildren.forwardTerminationSignals()
        // A snapshot holds a descriptor per folder level of the tree it walks, beside its object
        // files: the usual soft limit of 1024 is the hard limit's to give.
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        FaultInjection.startHashingAtExit()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let error as SnapError {
            fail(error.description, status: error.code == .locked ? ExitStatus.locked : ExitStatus.failure)
        } catch let error as PostgresError {
            fail(error.description)
        } catch let error as CommandFailure {
            fail(error.message, status: error.status)
        } catch let code as ExitCode {
            // A command that said what it had to (a partial snapshot, a failed check) and chose
            // its status: nothing more to print.
            Foundation.exit(code.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                exit(withError: error)  // --help, --version
            }
            // Usage errors too are one line: the cause, and where the fix is described.
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
            let command = CommandLine.arguments.dropFirst().first { subcommandNames.contains($0) }
            let help = command.map { "snap \($0) --help" } ?? "snap --help"
            fail("\(message) (see `\(help)`)", status: code == .validationFailure ? ExitStatus.usage : code.rawValue)
        }
    }

    static var subcommandNames: Set<String> {
        Set(configuration.subcommands.map { $0._commandName })
    }

    static func fail(_ message: String, status: Int32 = ExitStatus.failure) -> Never {
        StandardError.write("snap: error: \(message)\n")
        Foundation.exit(status)
    }
}

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "The repository folder (default: $SNAP_REPO, else the config file's, else /backups).")
    var repo: String?

    /// --repo, else $SNAP_REPO, else the config file's `repo`, else /backups.
    var repositoryPath: String {
        get throws {
            if let repo { return repo }
            if let fromEnvironment = ProcessInfo.processInfo.environment["SNAP_REPO"], !fromEnvironment.isEmpty {
                return fromEnvironment
            }
            return try ConfigFile.load().values["repo"] ?? "/backups"
        }
    }

    func openRepository() throws -> Repository {
        try Repository.open(at: try repositoryPath)
    }

    /// Opens the repository and takes its lock: shared commands wait for a forget or prune to
    /// finish (saying so on stderr); exclusive ones wait at most `timeout` seconds.
    func openRepository(locking kind: RepositoryLock.Kind, timeout: Double? = nil) throws -> (
        Repository, RepositoryLock
    ) {
        let repository = try openRepository()
        let lock = try RepositoryLock.acquire(kind, repository: repository, timeout: timeout) {
            StandardError.write("snap: \($0)\n")
        }
        return (repository, lock)
    }
}

/// A failure that carries its own exit status and message.
struct CommandFailure: Error {
    var message: String
    var status: Int32
}

/// Unbuffered writes to standard error, so messages interleave correctly with progress.
enum StandardError {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
