import Foundation
import SnapTestSupport
import Testing

@testable import SnapPostgres

@Suite("SQLText") struct SQLTextTests {
    @Test func statementsSplitOutsideQuotesAndComments() throws {
        let text = #"""
            COMMENT ON DATABASE app IS 'one; two''s -- not a comment';
            ALTER DATABASE "my;db" SET search_path TO 'x', "y;z"; -- a comment; with a semicolon
            /* block; /* nested; */ still */ GRANT CONNECT ON DATABASE app TO reader;
            SELECT $q$a;b$q$, E'c\';d';
            """#
        let statements = try #require(SQLText.statements(text))
        #expect(statements.count == 4, "\(statements)")
        #expect(statements[0] == "COMMENT ON DATABASE app IS 'one; two''s -- not a comment'")
        #expect(statements[1] == #"ALTER DATABASE "my;db" SET search_path TO 'x', "y;z""#)
        #expect(statements[2].hasSuffix("GRANT CONNECT ON DATABASE app TO reader"))
        #expect(statements[3] == #"SELECT $q$a;b$q$, E'c\';d'"#)
        #expect(SQLText.statements("SELECT 'open") == nil)
    }

    @Test func rolesNamedInGrantsRevokesAndSettings() {
        let text = #"""
            REVOKE ALL ON TABLE public.t FROM PUBLIC;
            GRANT SELECT,INSERT ON TABLE public.t TO reader, "Odd ""Role""" WITH GRANT OPTION;
            GRANT SELECT("to") ON TABLE public.t TO CURRENT_USER;
            SET SESSION AUTHORIZATION grantor;
            GRANT USAGE ON SCHEMA s TO "UPPER" GRANTED BY boss;
            RESET SESSION AUTHORIZATION;
            ALTER DEFAULT PRIVILEGES FOR ROLE creator IN SCHEMA s GRANT SELECT ON TABLES TO viewer;
            ALTER ROLE tuned IN DATABASE app SET work_mem TO '8MB';
            REVOKE CONNECT ON DATABASE app FROM leaver CASCADE;
            """#
        #expect(
            SQLText.rolesNamed(inGrants: text)
                == ["reader", "Odd \"Role\"", "grantor", "UPPER", "boss", "creator", "viewer", "tuned", "leaver"])
    }

    @Test func databaseNamesArePointedElsewhereOnlyWhereTheyAreNames() throws {
        let quoted = "\"snap_restore_1_app\""
        #expect(
            SQLText.renamingDatabase(in: "COMMENT ON DATABASE app IS 'the DATABASE app'", from: "app", to: quoted)
                == "COMMENT ON DATABASE \"snap_restore_1_app\" IS 'the DATABASE app'")
        #expect(
            SQLText.renamingDatabase(
                in: "ALTER ROLE r IN DATABASE \"It's \"\"odd\"\"\" SET x TO 'DATABASE y'", from: "It's \"odd\"",
                to: quoted) == "ALTER ROLE r IN DATABASE \"snap_restore_1_app\" SET x TO 'DATABASE y'")
        // A bare word is the lowercase name; a name with capitals is always quoted by pg_dump.
        #expect(SQLText.renamingDatabase(in: "GRANT ALL ON DATABASE App TO r", from: "App", to: quoted) == nil)
        #expect(SQLText.renamingDatabase(in: "ALTER DATABASE other SET x TO 1", from: "app", to: quoted) == nil)
    }
}

@Suite("DumpTableOfContents", needsServer) struct DumpTableOfContentsTests {
    @Test func readsOwnersGranteesAndDatabaseLevelEntriesFromTheFirstBytes() throws {
        let cluster = try TestCluster.start()
        let owner = cluster.uniqueDatabaseName("toc_owner")
        let reader = cluster.uniqueDatabaseName("toc_reader")
        let database = cluster.uniqueDatabaseName("toc's \"db\"")
        try cluster.psql("CREATE ROLE \(owner); CREATE ROLE \(reader);")
        try cluster.createDatabase(database)
        defer {
            try? cluster.dropDatabase(database)
            _ = try? cluster.psql("DROP ROLE IF EXISTS \(owner); DROP ROLE IF EXISTS \(reader);")
        }
        let quoted = TestCluster.identifier(database)
        try cluster.psql(
            """
            CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 20000) g; ALTER TABLE t OWNER TO \(owner); GRANT SELECT ON t TO \(reader);
            ALTER DATABASE \(quoted) SET search_path TO 'app', 'public';
            COMMENT ON DATABASE \(quoted) IS 'main; DATABASE x';
            GRANT CONNECT ON DATABASE \(quoted) TO \(reader);
            """, database: database)
        let bytes = try dumpWhole(cluster, database).bytes
        // Fed in small pieces, as a stream: the reader asks for more until the table is whole.
        var offset = 0
        let reading = try DumpTableOfContents.read(from: { buffer in
            let count = min(buffer.count, 1000, bytes.count - offset)
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
            offset += count
            return count
        })
        guard case .read(let contents) = reading else {
            Issue.record("not read: \(reading)")
            return
        }
        #expect(offset < bytes.count, "read the whole dump for its table of contents")
        #expect(contents.databaseName == database)
        #expect(contents.owners.contains(owner))
        #expect(contents.grantees == [reader])
        let levels = contents.databaseLevelEntries.map(\.desc).sorted()
        #expect(levels == ["ACL", "COMMENT", "DATABASE PROPERTIES"])
        #expect(contents.databaseLevelEntries.contains { $0.definition.contains("search_path") })
    }

    @Test func aPlainScriptIsNoArchive() {
        for (text, kind) in [
            (Array("--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n".utf8), "plain SQL"),
            ([0x1F, 0x8B, 0x08, 0x00], "gzip"), (Array("PGDM".utf8), nil), ([], nil),
        ] {
            let reading = DumpTableOfContents.read(text)
            switch reading {
            case .notCustomFormat(let found): #expect(kind.map { found.contains($0) } == true, "\(text): \(found)")
            case .needMore: #expect(kind == nil, "\(text)")
            default: Issue.record("\(text): \(reading)")
            }
        }
    }
}
