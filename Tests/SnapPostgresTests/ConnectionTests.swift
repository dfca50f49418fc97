import Foundation
import SnapPostgres
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("PostgresConnection", needsServer)
struct ConnectionTests {
    @Test func connectsThroughTheSocketAndRunsQueries() throws {
        let cluster = try TestCluster.start()
        let connection = try PostgresConnection(conninfo: cluster.conninfo(database: "postgres"))
        #expect(connection.host == cluster.socketDirectory)
        #expect(connection.port == String(cluster.port))
        #expect(connection.user == cluster.superuser)
        #expect(connection.database == "postgres")
        #expect(connection.serverVersionNumber / 10000 == cluster.majorVersion)
        #expect(connection.serverVersion.hasPrefix("\(cluster.majorVersion)."))
        #expect(!connection.usedPassword)

        let rows = try connection.query("SELECT 1, NULL::text, $1::text, 'é'", ["it's"])
        #expect(rows == [["1", nil, "it's", "é"]])
        #expect(try connection.query("SELECT g FROM generate_series(1, 3) g") == [["1"], ["2"], ["3"]])
        #expect(try connection.value("SELECT " + connection.quoteLiteral(#"a'b\c"#)) == #"a'b\c"#)
        #expect(try connection.value("SELECT 1 AS " + connection.quoteIdentifier("x\"y")) == "1")
    }

    @Test func failedStatementNamesTheReasonAndSQLState() throws {
        let cluster = try TestCluster.start()
        let connection = try PostgresConnection(conninfo: cluster.conninfo(database: "postgres"))
        let error = try #require(throws: PostgresError.self) { try connection.execute("SELECT * FROM no_such_table") }
        #expect(error.code == .query)
        #expect(error.sqlState == "42P01")
        #expect(error.description.contains("relation \"no_such_table\" does not exist"))
        #expect(error.description.contains("\"postgres\""))
        // The session survives a failed statement.
        #expect(try connection.value("SELECT 2") == "2")
    }

    @Test func passwordOverTCPReachesTheChildOnlyThroughItsEnvironment() throws {
        let cluster = try TestCluster.start()
        let connection = try PostgresConnection(
            conninfo: cluster.conninfo(database: "postgres", password: cluster.password)
                + " sslmode=disable connect_timeout=7",
            applicationName: "snap-test")
        #expect(connection.host == "127.0.0.1")
        #expect(connection.user == cluster.passwordUser)
        #expect(connection.usedPassword)
        #expect(connection.effectiveParameters["password"] == nil)
        #expect(connection.effectiveParameters["host"] == "127.0.0.1")

        let base = ["PATH": "/usr/bin:/bin", "PGSERVICE": "elsewhere", "PGHOST": "wrong-host", "PGPASSWORD": "stale"]
        let environment = connection.childEnvironment(base: base, database: "other", applicationName: "snap pg_dump")
        #expect(environment["PGPASSWORD"] == cluster.password)
        #expect(environment["PGHOST"] == "127.0.0.1")
        // Pinned to the address reached: a name with several addresses cannot lead elsewhere.
        #expect(environment["PGHOSTADDR"] == "127.0.0.1")
        #expect(environment["PGPORT"] == String(cluster.port))
        #expect(environment["PGUSER"] == cluster.passwordUser)
        #expect(environment["PGDATABASE"] == "other")
        #expect(environment["PGAPPNAME"] == "snap pg_dump")
        #expect(environment["PGSERVICE"] == nil)
        #expect(environment["PATH"] == "/usr/bin:/bin")
        // Settings the user gave travel along; libpq's defaults are left to the child's libpq.
        #expect(environment["PGSSLMODE"] == "disable")
        #expect(environment["PGCONNECT_TIMEOUT"] == "7")
        #expect(environment["PGTARGETSESSIONATTRS"] == nil)

        // A connection that needed no password hands none on, not even an inherited one.
        let trusted = try PostgresConnection(conninfo: cluster.conninfo(database: "postgres"))
        let trustedEnvironment = trusted.childEnvironment(base: base)
        #expect(trustedEnvironment["PGPASSWORD"] == nil)
        #expect(trustedEnvironment["PGHOST"] == cluster.socketDirectory)
        #expect(trustedEnvironment["PGHOSTADDR"] == nil)
        #expect(trustedEnvironment["PGDATABASE"] == "postgres")
        #expect(trustedEnvironment["PGSSLMODE"] == nil)

        // The environment really works: psql gets in over TCP with it and no argument.
        let psql = try runProcess(
            "\(cluster.binDirectory)/psql", ["-X", "-At", "-w", "-c", "SELECT current_user"],
            environment: connection.childEnvironment(base: ["PATH": "/usr/bin:/bin"]))
        #expect(psql.succeeded, "\(psql.stderr)")
        #expect(psql.stdout == cluster.passwordUser + "\n")
    }

    @Test func siblingConnectionReachesAnotherDatabaseWithTheSameCredentials() throws {
        let cluster = try TestCluster.start()
        let connection = try PostgresConnection(
            conninfo: cluster.conninfo(database: "postgres", password: cluster.password))
        let sibling = try connection.connect(toDatabase: "template1")
        #expect(sibling.database == "template1")
        #expect(sibling.host == "127.0.0.1")
        #expect(sibling.usedPassword)
    }

    @Test func refusedPortIsOneLineNamingHostPortAndReason() throws {
        let cluster = try TestCluster.start()
        let port = try TestCluster.freePort()
        let error = try #require(throws: PostgresError.self) {
            try PostgresConnection(
                conninfo: "host=127.0.0.1 port=\(port) dbname=appdb user=\(cluster.passwordUser) password=hunter22")
        }
        #expect(error.code == .connect)
        #expect(error.description.contains("127.0.0.1:\(port)"))
        #expect(error.description.contains("\"appdb\""))
        #expect(error.description.lowercased().contains("refused"))
        #expect(!error.description.contains("\n"))
        #expect(!error.description.contains("hunter22"))
    }

    @Test func missingSocketFolderNamesItAndTheReason() throws {
        let error = try #require(throws: PostgresError.self) {
            try PostgresConnection(conninfo: "host=/nonexistent/snap-socket port=5999 dbname=appdb")
        }
        #expect(error.code == .connect)
        #expect(error.description.contains("/nonexistent/snap-socket/.s.PGSQL.5999"))
        #expect(error.description.contains("No such file or directory"))
        #expect(!error.description.contains("\n"))
    }

    @Test func missingDatabaseIsNamed() throws {
        let cluster = try TestCluster.start()
        let error = try #require(throws: PostgresError.self) {
            try PostgresConnection(conninfo: cluster.conninfo(database: "no_such_db"))
        }
        #expect(error.code == .connect)
        #expect(error.description.contains("database \"no_such_db\" does not exist"))
        #expect(error.description.contains(cluster.socketDirectory))
    }

    @Test func wrongPasswordIsReportedWithoutThePassword() throws {
        let cluster = try TestCluster.start()
        let wrong = "Wrong-Secret-9876"
        for conninfo in [
            cluster.conninfo(database: "postgres", password: wrong),
            "postgresql://\(cluster.passwordUser):\(wrong)@127.0.0.1:\(cluster.port)/postgres",
        ] {
            let error = try #require(throws: PostgresError.self) { try PostgresConnection(conninfo: conninfo) }
            #expect(error.code == .connect)
            #expect(error.description.contains("password authentication failed for user \"\(cluster.passwordUser)\""))
            #expect(error.description.contains("127.0.0.1:\(cluster.port)"))
            #expect(!error.description.contains(wrong))
            #expect(!error.description.contains(cluster.password))
            #expect(!error.description.contains("\n"))
        }
        // No password at all: the message says where one can come from.
        let missing = try #require(throws: PostgresError.self) {
            try PostgresConnection(
                conninfo:
                    "host=127.0.0.1 port=\(cluster.port) dbname=postgres user=\(cluster.passwordUser) passfile=/nonexistent"
            )
        }
        #expect(missing.description.contains("PGPASSWORD"))
    }
}
